"""Runs survive interruption, bad data and bad numbers, and lose nothing already written."""

import json
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, run_script
import settings
import train


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


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
    result = run_script("train.py", *tiny_args(char_dataset, tmp_path, "--learning_rate", "1e30", "--warmup_iters",
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


@pytest.mark.parametrize("model", settings.MODELS)
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
    make_dataset(data_dir / "truncated", list(range(10)) * 20, list(range(10)) * 20, vocab_size=10)
    with open(data_dir / "truncated" / "train.bin", "ab") as f:
        f.write(b"\x01")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ckpt.pt").write_bytes((finished_run / "ckpt.pt").read_bytes()[:1000])
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    new_out = tmp_path / "new_out"
    fresh = ["--model", "gpt", *TINY, "--data_dir", str(data_dir), "--out_dir", str(new_out)]
    return {
        "token ids beyond the vocabulary": (fresh + ["--dataset", "too_big_ids", "--block_size", "8"], new_out, "token id 70"),
        "block_size longer than the data": (fresh + ["--dataset", "short"], new_out, "block_size"),
        "truncated bin": (fresh + ["--dataset", "truncated", "--block_size", "8"], new_out, "truncated"),
        "corrupt checkpoint": (tiny_args(char_dataset, corrupt, "--resume"), corrupt, "cannot read checkpoint"),
        "checkpoint of another config": (tiny_args(char_dataset, finished_run, "--resume", "--n_embd", "64"),
                                         finished_run, "other model settings"),
        "checkpoint of another model": (tiny_args(char_dataset, finished_run, "--resume", model=settings.MODELS[-1])
                                        if len(settings.MODELS) > 1 else None, finished_run, "holds a gpt model"),
        "a finished run without --resume": (tiny_args(char_dataset, finished_run), finished_run, "already holds a run"),
        "out_dir not writable": (fresh[:-1] + [str(a_file / "out"), "--dataset", "short"], a_file, "not a writable folder"),
        "invalid size": (fresh + ["--n_layer", "0"], new_out, "--n_layer must be at least 1"),
    }


CASES = ["token ids beyond the vocabulary", "block_size longer than the data", "truncated bin", "corrupt checkpoint",
         "checkpoint of another config", "checkpoint of another model", "a finished run without --resume",
         "out_dir not writable", "invalid size"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_error_line_and_writes_nothing(case, char_dataset, finished_run, tmp_path):
    args, out_dir, expected = bad_input_cases(char_dataset, finished_run, tmp_path)[case]
    if args is None:
        pytest.skip("needs a second model file")
    before = snapshot(out_dir)
    result = run_script("train.py", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and expected in lines[0], result.stderr
    assert snapshot(out_dir) == before
