"""train.py: where each setting comes from, then end to end: logs, checkpoints, resume, DDP, bad input; and sample.py on
its checkpoint. Then runs that survive interruption, bad data and bad numbers, and lose nothing already written."""

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, run_script
import train


def test_settings_come_from_preset_then_recipe_then_command_line():
    s, _ = train.resolve_settings(["--model", "gpt", "--device", "cpu"])
    recipe = train.MODELS["gpt"].RECIPE
    assert (s["preset"], s["n_layer"], s["n_embd"], s["block_size"], s["batch_size"], s["max_iters"]) == \
        ("cpu", 4, 128, 64, 12, 2000)
    assert s["learning_rate"] == recipe["learning_rate"] and s["weight_decay"] == recipe["weight_decay"]
    assert s["min_lr"] == pytest.approx(s["learning_rate"] * recipe["min_lr_ratio"])
    s, _ = train.resolve_settings(["--model", "gpt", "--device", "cpu", "--preset", "gpu", "--n_layer=3",
                                   "--learning_rate", "1e-2", "--qk_norm", "true"])
    assert (s["n_layer"], s["n_embd"], s["block_size"], s["learning_rate"], s["qk_norm"]) == (3, 384, 256, 1e-2, "true")
    assert s["out_dir"] == "out/gpt"


def test_a_warmup_share_and_min_lr_ratio_follow_the_run_length_and_the_learning_rate():
    # the anGPT paper's recipe for GPT+ (Table F.2): warmup over 20% of the run, decay to 0.01x the peak LR
    s, _ = train.resolve_settings(["--model", "gpt", "--device", "cpu", "--max_iters", "500", "--learning_rate",
                                   "4e-3", "--warmup", "20%", "--min_lr_ratio", "0.01"])
    assert (s["warmup"], s["warmup_iters"], s["min_lr"]) == ("20%", 100, pytest.approx(4e-5))
    assert train.get_lr(99, s) < s["learning_rate"] and train.get_lr(100, s) == pytest.approx(s["learning_rate"])
    assert train.get_lr(500, s) == pytest.approx(4e-5)
    # a number of steps stays one, whatever the run's length; 0% is no warmup
    for text, steps in (("30", 30), ("0%", 0)):
        s, _ = train.resolve_settings(["--model", "gpt", "--device", "cpu", "--max_iters", "500", "--warmup", text])
        assert s["warmup_iters"] == steps
    for bad in ("20.5", "100%", "-3", "a%"):
        with pytest.raises(train.ConfigError, match="--warmup is a number of steps"):
            train.resolve_settings(["--model", "gpt", "--device", "cpu", "--warmup", bad])


def test_help_shows_the_defaults_of_every_preset_and_model():
    help_text = train.build_parser().format_help()
    assert "cpu 2000, gpu 5000" in help_text  # --max_iters by preset
    assert "gpt 0.1" in help_text  # --weight_decay from gpt's RECIPE
    assert "--qk_norm" in help_text and "--rope" in help_text


def test_the_fineweb_preset_fits_the_readmes_hour_on_one_h100():
    s, _ = train.resolve_settings(["--model", "gpt", "--preset", "fineweb", "--device", "cpu"])
    assert (s["dataset"], s["block_size"], s["n_layer"], s["n_embd"]) == ("fineweb10B", 1024, 12, 768)
    tokens = s["batch_size"] * s["gradient_accumulation_steps"] * s["block_size"] * s["max_iters"]
    assert tokens == 262_144_000  # the README's 262M tokens per run
    module = train.MODELS["gpt"]
    with torch.device("meta"):
        model = module.Model(module.Config(**{k: s[k] for k in ("n_layer", "n_head", "n_embd", "block_size")},
                                           vocab_size=50304))
    flops = train.flops_per_token(model, s["block_size"])
    assert round(flops / 1e9, 2) == 1.02 and round(model.num_params() / 1e6) == 191
    minutes = flops * tokens * 5 / (0.4 * 989e12) / 60  # compare.py's five models at 40% MFU of an H100
    assert round(minutes) == 57


def test_flops_per_token_counts_every_matrix_multiply_and_the_attention():
    import gpt

    model = gpt.Model(gpt.Config(block_size=64, vocab_size=65, n_layer=2, n_head=2, n_embd=32))
    C, L, V, T = 32, 2, 65, 64
    per_layer = 3 * C * C + C * C + 8 * C * C + 4 * C * C  # c_attn, attn c_proj, c_fc, mlp c_proj
    matmul_weights = L * per_layer + V * C  # plus lm_head; the embedding lookup is not a multiply
    assert train.flops_per_token(model, T) == 6 * matmul_weights + 12 * L * C * T


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def train_tiny(char_dataset, out_dir, *extra, model="gpt"):
    data_dir, name = char_dataset
    return train.main(["--model", model, *TINY, "--data_dir", data_dir, "--dataset", name,
                       "--out_dir", str(out_dir), *extra])


@pytest.fixture(scope="module")
def tiny_run(char_dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    final = train_tiny(char_dataset, out_dir, "--max_iters", "6", "--eval_interval", "3", "--log_interval", "2")
    return out_dir, final


def test_a_run_writes_the_log_the_config_and_a_checkpoint(tiny_run):
    out_dir, final = tiny_run
    records = read_log(out_dir)
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 3, 6]
    assert [r["iter"] for r in steps] == [1, 3, 5]
    for r in evals:
        assert {"iter", "tokens", "train_loss", "val_loss", "time_s"} <= set(r)
    for r in steps:
        assert {"iter", "loss", "lr", "ms_per_step", "tokens_per_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["ms_per_step"] > 0
    assert evals[-1]["tokens"] == 6 * 4 * 32
    assert final["val_loss"] == evals[-1]["val_loss"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"] == "gpt" and config["n_embd"] == 32 and config["learning_rate"] == train.MODELS["gpt"].RECIPE["learning_rate"]
    ckpt = torch.load(out_dir / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 6 and ckpt["model_name"] == "gpt"
    assert ckpt["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert {"model", "optimizer", "model_config", "settings", "rng_cpu"} <= set(ckpt)


def test_loss_goes_down_in_a_short_run(char_dataset, tmp_path):
    final = train_tiny(char_dataset, tmp_path, "--max_iters", "60", "--eval_interval", "60", "--warmup", "0")
    first_eval = read_log(tmp_path)[0]
    assert first_eval["val_loss"] > 3.8 and final["val_loss"] < first_eval["val_loss"] - 0.8


@pytest.mark.parametrize("model", train.MODELS)
def test_resume_continues_with_the_same_losses_as_an_uninterrupted_run(char_dataset, tmp_path, model):
    # stopped at step 6 of 12, when every model's LR is already decaying: nGPT and anGPT have no warmup, and
    # GPT's is cut to 2 steps
    common = ["--max_iters", "12", "--eval_interval", "4", "--log_interval", "1", "--model", model,
              *(["--warmup", "2"] if model == "gpt" else [])]
    train_tiny(char_dataset, tmp_path / "whole", *common)
    stopped = train_tiny(char_dataset, tmp_path / "parts", *common, "--max_iters_per_launch", "6")
    assert stopped["stopped"] and torch.load(tmp_path / "parts" / "ckpt.pt", weights_only=True)["iter_num"] == 6
    train_tiny(char_dataset, tmp_path / "parts", *common, "--resume")
    whole, parts = read_log(tmp_path / "whole"), read_log(tmp_path / "parts")
    assert [r["iter"] for r in whole] == [r["iter"] for r in parts]
    for a, b in zip(whole, parts):
        for key in ("loss", "val_loss", "train_loss", "lr", "param_norm", "rel_step", "dir_cos"):
            if key in a:
                assert a[key] == b[key], (a["iter"], key)  # bit for bit, not approximately
    final = [torch.load(tmp_path / run / "ckpt.pt", weights_only=True)["model"] for run in ("whole", "parts")]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


def test_two_processes_match_one_process_with_gradient_accumulation(char_dataset, tmp_path):
    data_dir, name = char_dataset
    args = ["--model", "gpt", *TINY, "--data_dir", data_dir, "--dataset", name, "--max_iters", "10",
            "--log_interval", "1", "--eval_interval", "5", "--gradient_accumulation_steps", "2"]
    single = run_script("train.py", *args, "--out_dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", *args,
                     "--out_dir", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    losses_one = [r["loss"] for r in one if "loss" in r]
    losses_two = [r["loss"] for r in two if "loss" in r]
    assert len(losses_one) == len(losses_two) == 10
    assert losses_one == pytest.approx(losses_two, abs=1e-5)
    val_one = [r["val_loss"] for r in one if "val_loss" in r]
    val_two = [r["val_loss"] for r in two if "val_loss" in r]
    assert val_one == pytest.approx(val_two, abs=1e-5)


def test_the_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    s = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, decay_lr=True)
    assert train.get_lr(0, s) == pytest.approx(1 / 11)
    assert train.get_lr(9, s) == pytest.approx(10 / 11)
    assert train.get_lr(10, s) == pytest.approx(1.0)
    assert train.get_lr(60, s) == pytest.approx(0.55)
    assert train.get_lr(110, s) == pytest.approx(0.1)
    no_warmup = dict(s, warmup_iters=0, min_lr=0.0, max_iters=100)
    assert train.get_lr(0, no_warmup) == 1.0 and train.get_lr(50, no_warmup) == pytest.approx(0.5)


BAD_INPUTS = {
    "unknown model": ["--model", "transformerxl"],
    "n_embd not divisible by n_head": ["--model", "gpt", "--n_embd", "100", "--n_head", "3"],
    "missing data": ["--model", "gpt", "--dataset", "no_such_dataset"],
    "unknown option": ["--model", "gpt", "--n_layers", "4"],
    "bad value": ["--model", "gpt", "--max_iters", "many"],
    "model option out of range": ["--model", "gpt", "--qk_norm", "maybe"],
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_with_one_clear_error_line(case, tmp_path):
    out_dir = tmp_path / "out"
    result = run_script("train.py", *BAD_INPUTS[case], "--device", "cpu", "--out_dir", str(out_dir),
                        "--data_dir", str(tmp_path / "data"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr
    assert not out_dir.exists()


def test_device_mps_trains_in_fp32_without_compile_where_apple_s_gpu_is_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    s, _ = train.resolve_settings(["--model", "angpt", "--device", "mps"])
    assert (s["device"], s["preset"], s["dtype"], s["compile"]) == ("mps", "cpu", "float32", False)


def test_device_mps_where_it_is_not_available_is_one_line(tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = run_script("train.py", "--model", "angpt", "--device", "mps", "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.strip() == (
        "train.py: error: --device mps was asked for but MPS (Apple's GPU) is not available; use --device cpu")


def wandb_history(path):
    """The history rows of an offline wandb run file: a 7-byte header, then LevelDB log records in 32 KiB blocks
    (each a 7-byte header, crc, length and type: 1 a whole record, 2 to 4 its first, middle and last pieces) that
    hold wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, pos, part, rows = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record, part = wandb_internal_pb2.Record.FromString(part), b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_log_sends_every_record_to_the_wandb_run(char_dataset, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    for folder in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(folder, str(tmp_path))
    train_tiny(char_dataset, tmp_path / "out", "--max_iters", "6", "--eval_interval", "3", "--log_interval", "2",
               "--wandb_log", "true")
    wandb.teardown()  # the run file is complete once wandb's service has shut down, as when a user's process exits
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    rows = {row["_step"]: row for row in wandb_history(run_file)}
    # a row per optimizer step done: an eval record's iter counts them, a step record's is its step's index
    steps_done = lambda r: r["iter"] if "val_loss" in r else r["iter"] + 1
    logged = read_log(tmp_path / "out")
    assert sorted(rows) == sorted({steps_done(r) for r in logged}) == [0, 2, 3, 4, 6]
    for r in logged:
        prefix = "eval/" if "val_loss" in r else ""  # the two records of step 6 share its row
        for field in ("loss", "val_loss", "lr", "iter"):
            if field in r:
                assert rows[steps_done(r)][prefix + field] == pytest.approx(r[field])


def test_wandb_log_without_wandb_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(train.ConfigError, match="^--wandb_log true needs the wandb package: pip install wandb$"):
        train.resolve_settings(["--model", "gpt", "--device", "cpu", "--wandb_log", "true"])


@pytest.mark.parametrize("script", ["train.py", "prepare_data.py", "sample.py"])
def test_help_works(script):
    result = run_script(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_sample_prints_text_from_a_checkpoint(tiny_run):
    out_dir, _ = tiny_run
    result = run_script("sample.py", "--out_dir", str(out_dir), "--num_samples", "2", "--max_new_tokens", "40",
                        "--start", "ROMEO:")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("---------------")
    assert len(samples) == 3 and samples[0].strip().startswith("ROMEO:") and len(samples[1].strip()) > 40


def test_sample_without_a_checkpoint_says_how_to_make_one(tmp_path):
    result = run_script("sample.py", "--out_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "python train.py" in result.stderr


def test_gpt2_bpe_data_trains_and_samples(tmp_path, monkeypatch, tiny_shakespeare, gpt2_files):
    import prepare_data
    from conftest import use_gpt2_files

    use_gpt2_files(gpt2_files, tmp_path / "data", monkeypatch)
    text = tmp_path / "plays.txt"
    text.write_text(tiny_shakespeare[:20_000], encoding="utf-8")
    prepare_data.prepare_file(text, name="plays_bpe", tokenizer="gpt2", data_dir=tmp_path / "data")
    out_dir = tmp_path / "out"
    final = train.main(["--model", "gpt", *TINY, "--data_dir", str(tmp_path / "data"), "--dataset", "plays_bpe",
                        "--out_dir", str(out_dir), "--max_iters", "3", "--eval_interval", "3"])
    assert json.loads((out_dir / "config.json").read_text())["vocab_size"] == 50304  # GPT-2's, padded
    assert final["val_loss"] == pytest.approx(math.log(50304), abs=0.5)
    result = run_script("sample.py", "--out_dir", str(out_dir), "--num_samples", "1", "--max_new_tokens", "5",
                        "--start", "KING RICHARD", env=gpt2_files["env"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("KING RICHARD")


def test_step_records_carry_the_norm_metrics_and_eval_records_the_scales(tiny_run):
    out_dir, _ = tiny_run
    steps = [r for r in read_log(out_dir) if "loss" in r]
    for r in steps:
        assert r["param_norm"] > 0 and len(r["param_norm_layers"]) == 2 and 0 < r["rel_step"] < 1
        # the blocks' parameters, and outside them the final norm's 32 gains, which start at 1 (no embeddings)
        outside = r["param_norm"] ** 2 - sum(x * x for x in r["param_norm_layers"])
        assert outside == pytest.approx(32, rel=0.05)
        assert -1 < r["alignment"] < 1
    assert "dir_cos" not in steps[0] and all(0.9 < r["dir_cos"] <= 1 + 1e-6 for r in steps[1:])
    evals = [r for r in read_log(out_dir) if "val_loss" in r]
    assert set(evals[0]["scales"]) == {"transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1",
                                       "transformer.h.1.ln_2", "transformer.ln_f"}
    assert evals[0]["scales"]["transformer.ln_f"] == 1.0  # RMSNorm gains start at 1


def test_eval_records_carry_saturation_and_head_statistics_per_layer(tiny_run):
    out_dir, _ = tiny_run
    evals = [r for r in read_log(out_dir) if "val_loss" in r]
    for r in evals:
        assert len(r["saturation"]) == len(r["saturation_attn"]) == len(r["attn_logit_std"]) == 2
        assert r["saturation_kind"] == "all parameters x 1000"
        assert len(r["heads"]["n_eff"]) == 2 and all(len(layer) == 2 for layer in r["heads"]["n_eff"])
    # the first evaluation is of the fresh model: the random-init reference, far from saturated
    assert max(evals[0]["saturation"]) < 0.5


def test_decay_lr_false_keeps_the_learning_rate_constant_after_warmup():
    s = train.resolve_settings(["--model", "gpt", "--decay_lr", "false", "--warmup", "10"])[0]
    assert train.get_lr(4, s) < s["learning_rate"]
    assert [train.get_lr(it, s) for it in (10, 500, s["max_iters"])] == [s["learning_rate"]] * 3
    decayed = train.resolve_settings(["--model", "gpt", "--warmup", "10"])[0]
    assert train.get_lr(decayed["max_iters"], decayed) == decayed["min_lr"]


def test_ngpt_block_matrices_keep_their_norm_and_the_logged_norm_adds_the_scales(char_dataset, tmp_path):
    train_tiny(char_dataset, tmp_path, "--max_iters", "20", "--eval_interval", "20", "--log_interval", "5",
               model="ngpt")
    final_norm = [r["param_norm"] for r in read_log(tmp_path) if "loss" in r][-1]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    tracked = {name: p for name, p in state.items() if not name.startswith(("transformer.wte.", "lm_head."))}
    matrices = [p for name, p in tracked.items() if name.startswith("transformer.h.") and p.dim() == 2]
    # every unit row or column of a block matrix contributes 1 to ||theta||^2, so their part is fixed by the shapes;
    # the rest of the logged norm is the learned scale vectors
    n_embd = state["transformer.wte.weight"].size(1)
    assert sum(p.square().sum().item() for p in matrices) == pytest.approx(sum(p.numel() // n_embd for p in matrices),
                                                                           rel=1e-5)
    assert final_norm ** 2 == pytest.approx(sum(p.square().sum().item() for p in tracked.values()), rel=1e-5)


def test_a_crafted_meta_pkl_stops_train_and_sample_with_one_line_and_runs_nothing(char_dataset, tmp_path):
    import pickle
    import shutil

    from test_prepare_data import RunsCode

    data_dir, name = char_dataset
    shutil.copytree(Path(data_dir) / name, tmp_path / "data" / "crafted")
    args = ["--model", "gpt", *TINY, "--data_dir", str(tmp_path / "data"), "--dataset", "crafted", "--max_iters", "1"]
    train.main([*args, "--out_dir", str(tmp_path / "run")])  # a checkpoint trained on the folder while it was good
    marker = tmp_path / "ran"
    (tmp_path / "data" / "crafted" / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": RunsCode(marker)}))

    for result in (run_script("train.py", *args, "--out_dir", str(tmp_path / "out")),
                   run_script("sample.py", "--out_dir", str(tmp_path / "run"), "--max_new_tokens", "2")):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "meta.pkl is not a plain meta.pkl" in lines[0] and "nothing in it was run" in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_checkpoint_of_a_retired_option_resumes_in_today_s_terms_or_names_it(char_dataset, tmp_path):
    out_dir = tmp_path / "run"
    train_tiny(char_dataset, out_dir, "--max_iters", "2", "--eval_interval", "2", model="angpt")
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    for key in ("settings", "model_config"):  # as saved before --const_factors false became --const_factor_mult 2
        checkpoint[key] = dict(checkpoint[key], const_factors=False)
    torch.save(checkpoint, out_dir / "ckpt.pt")
    assert train.load_trained_model(out_dir / "ckpt.pt")[0].transformer.h[0].mlp.nu_uz == 1.0
    train_tiny(char_dataset, out_dir, "--max_iters", "4", "--eval_interval", "2", "--resume", model="angpt")
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 4 and checkpoint["model_config"]["const_factor_mult"] == 2.0
    # an option that the model file no longer has is named, not silently dropped
    for key in ("settings", "model_config"):
        checkpoint[key] = dict(checkpoint[key], g_shape="head")
    torch.save(checkpoint, out_dir / "ckpt.pt")
    with pytest.raises(train.ConfigError, match="g_shape head there, None now"):
        train_tiny(char_dataset, out_dir, "--max_iters", "6", "--resume", model="angpt")


def test_a_run_logged_before_warmup_and_min_lr_ratio_reads_in_today_s_terms():
    old = dict(model="angpt", learning_rate=2e-3, warmup_frac=0.2, warmup_iters=400, min_lr=2e-5, n_layer=4)
    assert train.in_current_terms(old) == dict(old, warmup="20%", min_lr_ratio=pytest.approx(0.01))
    old = dict(model="gpt", learning_rate=2e-3, warmup_iters=100, min_lr=2e-4)  # an --min_lr that is not the recipe's
    assert train.in_current_terms(old) == dict(old, warmup=100, min_lr_ratio=pytest.approx(0.1))
    assert train.in_current_terms(dict(n_layer=4, const_factors=False)) == dict(n_layer=4, const_factor_mult=2.0)


@pytest.mark.parametrize("damage, expected", [("nanoGPT's", "is not a checkpoint of this suite's train.py"),
                                              ("another width", "does not fit gpt.py as it is now")])
def test_sample_names_what_is_wrong_with_a_checkpoint_in_one_line(tiny_run, tmp_path, damage, expected):
    out_dir, _ = tiny_run
    checkpoint = torch.load(out_dir / "ckpt.pt", weights_only=True)
    if damage == "nanoGPT's":  # nanoGPT's keys: model, optimizer, model_args, iter_num, best_val_loss, config
        checkpoint = dict(model=checkpoint["model"], model_args=checkpoint["model_config"], iter_num=6)
    else:
        checkpoint["model_config"]["n_embd"] *= 2
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    result = run_script("sample.py", "--out_dir", str(tmp_path), "--max_new_tokens", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


# ----------------------------------------------------------------------------- helpers for what follows

def tiny_args(char_dataset, out_dir, *extra, model="gpt"):
    data_dir, name = char_dataset
    return ["--model", model, *TINY, "--data_dir", data_dir, "--dataset", name, "--out_dir", str(out_dir), *extra]


def snapshot(folder):
    """Every file under folder with its bytes, to prove a failed command changed nothing."""
    if not folder.exists():
        return None
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_losses_equal(whole, parts):
    assert [r["iter"] for r in whole] == [r["iter"] for r in parts]
    for a, b in zip(whole, parts):
        for key in ("loss", "val_loss", "train_loss", "lr"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (a["iter"], key)


# ----------------------------------------------------------------------------- non-finite numbers

def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(char_dataset, tmp_path):
    result = run_script("train.py", *tiny_args(char_dataset, tmp_path, "--learning_rate", "1e30", "--warmup",
                                               "0", "--max_iters", "30", "--eval_interval", "10", "--log_interval", "5"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite at step 1;" in lines[0] and "ckpt.pt (step 0)" in lines[0]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 0 and all(torch.isfinite(p).all() for p in ckpt["model"].values())


def test_skip_nonfinite_skips_a_bad_step_and_training_goes_on(char_dataset, tmp_path, monkeypatch):
    import gpt

    forward, calls = gpt.Model.forward, []

    def forward_with_one_bad_step(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) == 4:  # the fourth training step
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(gpt.Model, "forward", forward_with_one_bad_step)
    final = train.main(tiny_args(char_dataset, tmp_path, "--max_iters", "8", "--eval_interval", "8",
                                 "--log_interval", "1", "--skip_nonfinite", "1"))
    records = read_log(tmp_path)
    assert [r["iter"] for r in records if r.get("skipped")] == [3]
    step_losses = [r["loss"] for r in records if "loss" in r]
    assert len(step_losses) == 8 and all(np.isfinite(step_losses))
    assert np.isfinite(final["val_loss"])
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(torch.isfinite(p).all() for p in ckpt["model"].values())


# ----------------------------------------------------------------------------- interruption

def start_training(args):
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def wait_for_steps(out_dir, count, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out_dir / "log.jsonl").exists() and sum("loss" in r for r in read_log(out_dir)) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError


def test_sigint_saves_a_checkpoint_from_which_resume_is_exact(char_dataset, tmp_path):
    common = ["--max_iters", "400", "--eval_interval", "100", "--log_interval", "1"]
    train.main(tiny_args(char_dataset, tmp_path / "whole", *common))
    process = start_training(tiny_args(char_dataset, tmp_path / "parts", *common))
    wait_for_steps(tmp_path / "parts", 5, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "--resume" in stdout.strip().splitlines()[-1]
    stopped_at = torch.load(tmp_path / "parts" / "ckpt.pt", weights_only=True)["iter_num"]
    assert 5 <= stopped_at < 400
    train.main(tiny_args(char_dataset, tmp_path / "parts", *common, "--resume"))
    assert_losses_equal(read_log(tmp_path / "whole"), read_log(tmp_path / "parts"))


def test_a_second_sigint_stops_at_once_and_names_the_checkpoint_kept(char_dataset, tmp_path):
    # a step of several seconds (context 1024, batch 16, one core): the first SIGINT waits for its end, the second not
    args = tiny_args(char_dataset, tmp_path, "--n_layer", "4", "--n_embd", "256", "--n_head", "4", "--block_size",
                     "1024", "--batch_size", "16", "--eval_iters", "1", "--max_iters", "5")
    process = start_training(args)
    deadline = time.time() + 120
    while not (tmp_path / "ckpt.pt").exists():  # the checkpoint of step 0, before the first step
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    # the second only once the first was handled: two signals that come during one long torch op are handled as one
    early = b""
    while b"stopping after this step" not in early:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        early += os.read(process.stdout.fileno(), 4096)
    sent = time.time()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert time.time() - sent < 2.0  # not at the end of the step
    assert process.returncode == 128 + signal.SIGINT
    assert f"the last checkpoint, {tmp_path / 'ckpt.pt'} (step 0), is the one kept" in stderr
    assert not any("loss" in r for r in read_log(tmp_path))  # no step was completed
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 0


def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(char_dataset, tmp_path):
    # a model big enough that saving takes a while, saved after every step: SIGKILL lands in or near a save
    args = tiny_args(char_dataset, tmp_path, "--n_layer", "4", "--n_embd", "256", "--n_head", "4", "--max_iters",
                     "1000", "--eval_interval", "1", "--eval_iters", "1", "--log_interval", "1")
    saved_iters = []
    for delay in (0.0, 0.013, 0.029, 0.041):
        process = start_training(args + (["--resume"] if (tmp_path / "ckpt.pt").exists() else []))
        wait_for_steps(tmp_path, len(saved_iters) + 2, process)
        time.sleep(delay)
        process.kill()
        process.communicate()
        ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
        assert ckpt["model_name"] == "gpt" and "optimizer" in ckpt
        saved_iters.append(ckpt["iter_num"])
    assert saved_iters == sorted(saved_iters) and saved_iters[-1] > 0  # each launch resumed and saved anew


@pytest.mark.parametrize("model", train.MODELS)
def test_resume_is_exact_with_two_processes(char_dataset, tmp_path, model):
    common = ["--model", model, "--max_iters", "8", "--eval_interval", "4", "--log_interval", "1",
              "--gradient_accumulation_steps", "2"]
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]
    whole = run_script(*launch, *tiny_args(char_dataset, tmp_path / "whole", *common))
    assert whole.returncode == 0, whole.stderr[-2000:]
    first = run_script(*launch, *tiny_args(char_dataset, tmp_path / "parts", *common, "--max_iters_per_launch", "3"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert torch.load(tmp_path / "parts" / "ckpt.pt", weights_only=True)["iter_num"] == 3
    second = run_script(*launch, *tiny_args(char_dataset, tmp_path / "parts", *common, "--resume"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert_losses_equal(read_log(tmp_path / "whole"), read_log(tmp_path / "parts"))


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def finished_run(char_dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("finished")
    train.main(tiny_args(char_dataset, out_dir, "--max_iters", "2", "--eval_interval", "2"))
    return out_dir


def make_dataset(folder, train_ids, val_ids, vocab_size):
    folder.mkdir(parents=True)
    np.array(train_ids, dtype=np.uint16).tofile(folder / "train.bin")
    np.array(val_ids, dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump(dict(vocab_size=vocab_size, itos={}, stoi={}), f)


def bad_input_cases(char_dataset, finished_run, tmp_path):
    data_dir = tmp_path / "data"
    make_dataset(data_dir / "too_big_ids", list(range(10)) * 20 + [70], list(range(10)) * 20, vocab_size=10)
    make_dataset(data_dir / "short", list(range(10)) * 2, list(range(10)) * 2, vocab_size=10)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    new_out = tmp_path / "new_out"
    fresh = ["--model", "gpt", *TINY, "--data_dir", str(data_dir), "--out_dir", str(new_out)]
    return {
        "token ids beyond the vocabulary": (fresh + ["--dataset", "too_big_ids", "--block_size", "8"], new_out, "token id 70"),
        "block_size longer than the data": (fresh + ["--dataset", "short"], new_out, "block_size"),
        "checkpoint of another config": (tiny_args(char_dataset, finished_run, "--resume", "--n_embd", "64"),
                                         finished_run, "other model settings"),
        "checkpoint of another model": (tiny_args(char_dataset, finished_run, "--resume", model="angpt"), finished_run,
                                        "--model angpt (checkpoint: gpt)"),
        "a finished run without --resume": (tiny_args(char_dataset, finished_run), finished_run, "already holds a run"),
        "out_dir not writable": (fresh[:-1] + [str(a_file / "out"), "--dataset", "short"], a_file, "not a writable folder"),
        "invalid size": (fresh + ["--n_layer", "0"], new_out, "--n_layer must be at least 1"),
    }


CASES = ["token ids beyond the vocabulary", "block_size longer than the data",
         "checkpoint of another config", "checkpoint of another model", "a finished run without --resume",
         "out_dir not writable", "invalid size"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_error_line_and_writes_nothing(case, char_dataset, finished_run, tmp_path):
    args, out_dir, expected = bad_input_cases(char_dataset, finished_run, tmp_path)[case]
    before = snapshot(out_dir)
    result = run_script("train.py", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and expected in lines[0], result.stderr
    assert snapshot(out_dir) == before
