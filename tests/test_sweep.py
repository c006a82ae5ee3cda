"""experiments/sweep.py: one run per model, value and seed of any train.py option; what counts as diverged, batch sizes
at a fixed token budget, and values relative to each model's own."""

import json
import math
from pathlib import Path

import pytest

from conftest import TINY, run_script
from experiments import sweep
import train

FEW = [*TINY, "--n_layer", "1"]  # one layer and a handful of steps: each run takes about a second on one core
NO_BATCH_SIZE = [a for i, a in enumerate(FEW) if "--batch_size" not in FEW[max(0, i - 1):i + 1]]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_run_that_learns_has_not_diverged():
    assert sweep.divergence([4.0, 3.0, 2.0]) is None
    assert sweep.divergence([4.0, 2.0, 2.5]) is None  # gave back a quarter of its gain: noise, not divergence


def test_a_run_that_ends_above_its_start_or_climbs_back_most_of_the_way_has_diverged():
    assert "not below the initial" in sweep.divergence([4.0, 3.0, 4.2])
    assert "rose from 2.0000 back to 3.5000" in sweep.divergence([4.0, 2.0, 3.5])
    assert "nan" in sweep.divergence([4.0, float("nan")])


def test_near_best_keeps_the_values_within_two_percent_of_the_lowest_loss():
    assert sweep.near_best({"1e-3": 1.50, "2e-3": 1.52, "4e-3": 1.60, "1e30": None}) == ["1e-3", "2e-3"]
    assert sweep.near_best({"1e30": None}) == []


@pytest.fixture(scope="module")
def lr_sweep(char_dataset, tmp_path_factory):
    """A sweep of two learning rates, the second absurd so that both models diverge there."""
    data_dir, name = char_dataset
    out = tmp_path_factory.mktemp("lr_sweep")
    argv = ["--sweep", "learning_rate=2e-3,1e30", "--models", "gpt,ngpt", "--seeds", "1", "--iters", "6",
            "--warmup_iters", "0", "--out_dir", str(out), *FEW, "--data_dir", data_dir, "--dataset", name]
    return argv, out, sweep.main(argv)


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
    second = sweep.main(argv)
    out = capsys.readouterr().out
    assert "reusing the diverged run" in out and "reusing the complete run" in out and "python train.py" not in out
    assert second["models"] == first["models"]


def test_a_batch_size_sweep_keeps_the_token_budget(char_dataset, tmp_path):
    data_dir, name = char_dataset
    # 8 steps at the cpu preset's batch_size 12: 96 sequences per run, at any batch size
    results = sweep.main(["--sweep", "batch_size=6,24", "--models", "gpt", "--seeds", "1", "--iters", "8",
                            "--eval_interval", "4", "--out_dir", str(tmp_path), *NO_BATCH_SIZE,
                            "--data_dir", data_dir, "--dataset", name])
    configs = {r["value"]: json.loads((Path(r["dir"]) / "config.json").read_text()) for r in results["runs"]}
    assert {v: c["max_iters"] for v, c in configs.items()} == {"6": 16, "24": 4}
    sequences = dict(max_iters=96, eval_interval=48, eval_iters=24, warmup_iters=1200)  # GPT's recipe warmup: 100
    for steps, n in sequences.items():  # steps x batch_size: the same number of sequences at every batch size
        assert [c[steps] * c["batch_size"] for c in configs.values()] == [n, n]
    assert results["token_budget"]["tokens"] == 96 * 32
    assert "Fixed token budget: every run sees 3,072 training tokens" in (tmp_path / "results.md").read_text()


def test_values_written_xk_are_k_times_each_models_own(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = sweep.main(["--sweep", "learning_rate=x0.5,x2", "--models", "gpt,ngpt", "--seeds", "1", "--iters", "2",
                          "--out_dir", str(tmp_path), *FEW, "--data_dir", data_dir, "--dataset", name])
    lrs = {(r["key"], r["value"]): json.loads((Path(r["dir"]) / "config.json").read_text())["learning_rate"]
           for r in results["runs"]}
    gpt, ngpt = (train.MODELS[m].RECIPE["learning_rate"] for m in ("gpt", "ngpt"))
    assert lrs == {("gpt", "x0.5"): gpt / 2, ("gpt", "x2"): gpt * 2, ("ngpt", "x0.5"): ngpt / 2, ("ngpt", "x2"): ngpt * 2}
    assert "\n| x0.5 | " in (tmp_path / "results.md").read_text()


def test_a_sweep_without_values_gets_one_error_line_before_any_training(tmp_path):
    result = run_script("-m", "experiments.sweep", "--sweep", "learning_rate", "--out_dir", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("experiments.sweep: error: --sweep learning_rate: expected OPTION=V1,V2")
    assert not any(tmp_path.iterdir())
    assert not any(tmp_path.iterdir())
