"""compare.py: steps-to-target and speedup on curves with known answers, its outputs on tiny runs, training mode;
and --sweep, the papers' claims beyond convergence speed (LR and batch-size ranges)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
import compare
import norms
import settings
import train

# one layer and 20 steps: enough for two distinct eval curves in a second or two per run
SHORT = [*TINY, "--n_layer", "1", "--max_iters", "20", "--eval_interval", "5"]
FEW = [*TINY, "--n_layer", "1"]  # and a handful of steps: each run takes about a second on one core
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_steps_to_reach_interpolates_linearly_between_evaluations():
    assert compare.steps_to_reach([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.0], 2.5) == pytest.approx(15.0)
    assert compare.steps_to_reach([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.0], 1.2) == pytest.approx(28.0)


def test_steps_to_reach_is_the_eval_step_when_the_curve_hits_the_target_there():
    assert compare.steps_to_reach([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.0], 2.0) == 20
    assert compare.steps_to_reach([0, 10, 20], [4.0, 3.0, 2.0], 5.0) == 0  # already below at the start


def test_steps_to_reach_takes_the_first_crossing_of_a_noisy_curve():
    assert compare.steps_to_reach([0, 10, 20, 30], [4.0, 2.0, 3.0, 1.0], 2.5) == pytest.approx(7.5)


def test_a_curve_that_never_reaches_the_target_is_not_reached_not_extrapolated():
    assert compare.steps_to_reach([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.5], 1.0) is None
    assert compare.speedup(30, None) is None
    assert compare.speedup(None, 15) is None


def test_speedup_is_baseline_steps_over_model_steps():
    baseline = compare.steps_to_reach([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.0], 1.0)  # 30: its last step
    model = compare.steps_to_reach([0, 10, 20, 30], [4.0, 2.0, 1.0, 0.5], 1.0)  # 20
    assert compare.speedup(baseline, model) == pytest.approx(1.5)


@pytest.fixture(scope="module")
def two_runs(char_dataset, tmp_path_factory):
    """Two tiny train.py runs that differ in their model: GPT and GPT+QK-norm."""
    data_dir, name = char_dataset
    root = tmp_path_factory.mktemp("runs")
    for folder, extra in (("a", []), ("b", ["--qk_norm", "true", "--learning_rate", "8e-3"])):
        train.main(["--model", "gpt", *SHORT, "--data_dir", data_dir, "--dataset", name,
                    "--out_dir", str(root / folder), "--warmup_iters", "0", *extra])
    return root


def test_compare_writes_a_plot_a_table_and_the_numbers_behind_it(two_runs, tmp_path):
    out = tmp_path / "out"
    compare.main(["--runs", str(two_runs / "a"), str(two_runs / "b"), "--out_dir", str(out)])

    png = (out / "convergence.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000

    table = (out / "results.md").read_text()
    assert "| model | LR | final val loss | target (baseline) | steps to target | speedup | ms/step |" in table
    assert "\n| GPT | " in table and "\n| GPT+QK-norm | " in table

    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert models["gpt_qk"]["baseline"] == "gpt"

    def mean_curve(key):  # recomputed from the stored per-run curves
        runs = [r for r in results["runs"] if r["key"] == key]
        return runs[0]["iters"], np.mean([r["val_loss"] for r in runs], axis=0)

    base_iters, base_losses = mean_curve("gpt")
    target = base_losses[-1]
    assert models["gpt_qk"]["target_loss"] == pytest.approx(target)
    model_steps = compare.steps_to_reach(*mean_curve("gpt_qk"), target)
    assert model_steps is not None  # the higher LR gets there first in 20 steps
    assert models["gpt_qk"]["steps_to_target"] == pytest.approx(model_steps)
    assert models["gpt_qk"]["speedup"] == pytest.approx(base_iters[-1] / model_steps)
    assert models["gpt"]["speedup"] == 1.0
    # against every baseline too: GPT+QK-norm's against GPT is its paper baseline's; GPT's against GPT+QK-norm's loss
    assert models["gpt_qk"]["vs_baselines"]["gpt"]["speedup"] == pytest.approx(models["gpt_qk"]["speedup"])
    qk_iters, qk_losses = mean_curve("gpt_qk")
    gpt_vs_qk = models["gpt"]["vs_baselines"]["gpt_qk"]
    assert gpt_vs_qk["target_loss"] == pytest.approx(qk_losses[-1])
    assert gpt_vs_qk["steps_to_target"] == compare.steps_to_reach(base_iters, base_losses, qk_losses[-1])
    assert "## Against each baseline" in table

    # the norm-growth paper's plots and tables (norms.py's reports, tested in test_norms.py) come along
    for name in ("norms.png", "saturation.png", "heads.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    for section in ("## Parameter norm", "## Saturation and attention heads", "## Hidden-state norm"):
        assert section in table
    assert models["gpt"]["norms"] == norms.mean_norm_curve([r for r in results["runs"] if r["key"] == "gpt"])


def test_a_target_that_no_curve_reaches_is_reported_as_not_reached(two_runs, tmp_path):
    compare.main(["--runs", str(two_runs), "--out_dir", str(tmp_path), "--target-loss", "0.5"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(m["steps_to_target"] is None and m["speedup"] is None for m in results["models"].values())
    assert "not reached" in (tmp_path / "results.md").read_text()


def test_compare_trains_interleaved_runs_end_to_end(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = compare.main(["--iters", "10", "--seeds", "1", "--models", "gpt", "--out_dir", str(tmp_path),
                            *TINY, "--n_layer", "1", "--data_dir", data_dir, "--dataset", name])
    assert (tmp_path / "runs" / "gpt-s0" / "log.jsonl").exists()
    assert (tmp_path / "convergence.png").read_bytes().startswith(PNG_SIGNATURE)
    assert results["models"]["gpt"]["curve"]["iters"][-1] == 10
    assert results["settings"]["max_iters"] == 10


def test_norms_trains_the_three_recipes_and_gpt_without_decay_at_a_constant_lr(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = compare.main(["--norms", "--iters", "4", "--seeds", "1", "--out_dir", str(tmp_path), *TINY,
                            "--n_layer", "1", "--eval_interval", "2", "--data_dir", data_dir, "--dataset", name])
    assert list(results["models"]) == [k for k in compare.NORMS_KEYS if compare.VARIANTS[k][0] in settings.MODELS]
    config = json.loads((tmp_path / "runs" / "gpt_const-s0" / "config.json").read_text())
    assert config["weight_decay"] == 0 and config["decay_lr"] is False
    assert (tmp_path / "heads.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_same_command_again_reuses_complete_runs(char_dataset, tmp_path, capsys):
    data_dir, name = char_dataset
    argv = ["--iters", "4", "--seeds", "1", "--models", "gpt", "--out_dir", str(tmp_path),
            *TINY, "--n_layer", "1", "--data_dir", data_dir, "--dataset", name]
    first = compare.main(argv)
    second = compare.main(argv)
    assert "reusing the complete run" in capsys.readouterr().out
    assert second["runs"][0]["val_loss"] == first["runs"][0]["val_loss"]


def test_the_lr_sweep_picks_the_best_lr_and_the_comparison_uses_it(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = compare.main(["--lr-sweep", "--lr-sweep-iters", "4", "--iters", "4", "--seeds", "1", "--models", "gpt",
                            "--out_dir", str(tmp_path), *TINY, "--n_layer", "1", "--data_dir", data_dir, "--dataset", name])
    losses = results["lr_sweep"]["gpt"]["final_val_loss"]
    assert len(losses) == len(compare.LR_MULTIPLIERS)
    best = float(min(losses, key=losses.get))
    assert results["lr_sweep"]["gpt"]["best"] == best
    assert results["models"]["gpt"]["learning_rate"] == [best]
    assert "## Learning-rate sweep" in (tmp_path / "results.md").read_text()


# ----------------------------------------------------------------------------- --sweep

def test_a_run_that_learns_has_not_diverged():
    assert compare.divergence([4.0, 3.0, 2.0]) is None
    assert compare.divergence([4.0, 2.0, 2.5]) is None  # gave back a quarter of its gain: noise, not divergence


def test_a_run_that_ends_above_its_start_or_climbs_back_most_of_the_way_has_diverged():
    assert "not below the initial" in compare.divergence([4.0, 3.0, 4.2])
    assert "rose from 2.0000 back to 3.5000" in compare.divergence([4.0, 2.0, 3.5])
    assert "nan" in compare.divergence([4.0, float("nan")])


def test_near_best_keeps_the_values_within_two_percent_of_the_lowest_loss():
    assert compare.near_best({"1e-3": 1.50, "2e-3": 1.52, "4e-3": 1.60, "1e30": None}) == ["1e-3", "2e-3"]
    assert compare.near_best({"1e30": None}) == []


@pytest.fixture(scope="module")
def lr_sweep(char_dataset, tmp_path_factory):
    """A sweep of two learning rates, the second absurd so that both models diverge there."""
    data_dir, name = char_dataset
    out = tmp_path_factory.mktemp("lr_sweep")
    argv = ["--sweep", "learning_rate=2e-3,1e30", "--models", "gpt,ngpt", "--seeds", "1", "--iters", "6",
            "--warmup_iters", "0", "--out_dir", str(out), *FEW, "--data_dir", data_dir, "--dataset", name]
    return argv, out, compare.main(argv)


def test_a_sweep_writes_a_plot_and_a_row_per_value_with_a_column_per_model(lr_sweep):
    _, out, results = lr_sweep
    assert (out / "sweep.png").read_bytes().startswith(PNG_SIGNATURE)
    table = (out / "results.md").read_text()
    assert "| learning_rate | GPT | nGPT |" in table
    assert "\n| 2e-3 | " in table and "\n| 1e30 | " in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["values"] == ["2e-3", "1e30"]
    for key in ("gpt", "ngpt"):
        assert math.isfinite(saved["models"][key]["points"]["2e-3"]["mean"])
    assert sorted((r["key"], r["value"]) for r in saved["runs"]) == \
        [("gpt", "1e30"), ("gpt", "2e-3"), ("ngpt", "1e30"), ("ngpt", "2e-3")]


def test_a_diverged_point_is_labelled_diverged_not_dropped(lr_sweep):
    _, out, results = lr_sweep
    assert "\n| 1e30 | diverged | diverged |" in (out / "results.md").read_text()
    for key in ("gpt", "ngpt"):
        point = results["models"][key]["points"]["1e30"]
        assert point["diverged"] == 1 and point["mean"] is None
    diverged = [r for r in results["runs"] if r["value"] == "1e30"]
    assert all("non-finite" in r["diverged"] for r in diverged)


def test_the_same_sweep_again_reuses_its_runs_the_diverged_ones_too(lr_sweep, capsys):
    argv, _, first = lr_sweep
    capsys.readouterr()
    second = compare.main(argv)
    out = capsys.readouterr().out
    assert "reusing the diverged run" in out and "reusing the complete run" in out and "python train.py" not in out
    assert second["models"] == first["models"]


def test_a_batch_size_sweep_keeps_the_token_budget(char_dataset, tmp_path):
    data_dir, name = char_dataset
    # 8 steps at the cpu preset's batch_size 12: 96 sequences per run, at any batch size
    results = compare.main(["--sweep", "batch_size=6,24", "--models", "gpt", "--seeds", "1", "--iters", "8",
                            "--eval_interval", "4", "--out_dir", str(tmp_path), *compare.without(FEW, "--batch_size"),
                            "--data_dir", data_dir, "--dataset", name])
    configs = {r["value"]: json.loads((Path(r["dir"]) / "config.json").read_text()) for r in results["runs"]}
    assert {v: c["max_iters"] for v, c in configs.items()} == {"6": 16, "24": 4}
    sequences = dict(max_iters=96, eval_interval=48, eval_iters=24, warmup_iters=1200)  # GPT's recipe warmup: 100
    for steps, n in sequences.items():  # steps x batch_size: the same number of sequences at every batch size
        assert [c[steps] * c["batch_size"] for c in configs.values()] == [n, n]
    assert results["token_budget"]["tokens"] == 96 * 32
    assert "Fixed token budget: every run sees 3,072 training tokens" in (tmp_path / "results.md").read_text()


def test_a_sweep_without_values_is_refused_before_any_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--sweep", "learning_rate", "--out_dir", str(tmp_path)])
    assert "expected OPTION=V1,V2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- --contexts

def test_contexts_keep_the_tokens_per_step_and_give_speedups_that_the_logs_recompute(char_dataset, tmp_path):
    data_dir, name = char_dataset
    small = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--eval_iters", "2", "--device", "cpu",
             "--dtype", "float32", "--data_dir", data_dir, "--dataset", name]
    compare.main(["--contexts", "16,32", "--tokens-per-step", "64", "--seeds", "1", "--models", "gpt,ngpt",
                  "--iters", "12", "--eval_interval", "4", *small, "--out_dir", str(tmp_path)])
    assert (tmp_path / "contexts.png").read_bytes().startswith(PNG_SIGNATURE)
    table = (tmp_path / "results.md").read_text()
    assert "| context 16 (batch 4) | context 32 (batch 2) |" in table and "\n| nGPT (GPT) | " in table
    results = json.loads((tmp_path / "results.json").read_text())

    for context in (16, 32):
        logs = {key: [json.loads(line) for line in (tmp_path / "runs" / f"{key}-T{context}-s0" / "log.jsonl").open()]
                for key in ("gpt", "ngpt")}
        # the same tokens per step at every context, from the logs themselves
        for records in logs.values():
            assert {r["tokens"] / (r["iter"] + 1) for r in records if "loss" in r} == {64.0}
        # the speedup, recomputed from the logged eval curves
        curves = {key: ([r["iter"] for r in records if "val_loss" in r], [r["val_loss"] for r in records if "val_loss" in r])
                  for key, records in logs.items()}
        target = curves["gpt"][1][-1]
        steps = compare.steps_to_reach(*curves["ngpt"], target)
        ngpt = results["models"][str(context)]["ngpt"]
        assert ngpt["target_loss"] == pytest.approx(target) and ngpt["steps_to_target"] == pytest.approx(steps)
        assert ngpt["speedup"] == pytest.approx(compare.speedup(curves["gpt"][0][-1], steps))


@pytest.mark.parametrize("argv, expected", [
    (["--contexts", "16,48", "--tokens-per-step", "64"], "expected context lengths that divide --tokens-per-step 64"),
    (["--contexts", "16,32", "--batch_size", "4"], "--batch_size is set by --contexts and --tokens-per-step"),
])
def test_contexts_refuse_what_would_break_the_equal_tokens_per_step(argv, expected, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main([*argv, "--out_dir", str(tmp_path)])
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
