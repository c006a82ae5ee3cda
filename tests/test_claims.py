"""compare.py --sweep: the papers' claims beyond convergence speed (LR and batch-size ranges), on tiny runs."""

import json
import math
from pathlib import Path

import pytest

from conftest import TINY
import compare

# one layer and a handful of steps: each run takes about a second on one core
FEW = [*TINY, "--n_layer", "1"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
