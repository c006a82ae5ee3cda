"""experiments/sweep.py: one run per model, value and seed of any train.py option; what counts as diverged, batch sizes
at a fixed token budget, values relative to each model's own, and trends: every point's LR tuned, the speedups per
value, contexts at a fixed number of tokens per step, training lengths, and runs reused from another folder."""

import json
import math
from pathlib import Path

import pytest

import compare
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
            "--warmup", "0", "--out_dir", str(out), *FEW, "--data_dir", data_dir, "--dataset", name]
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


# -----------------------------------------------------------------------------
# Trends: every point tuned, and the speedups per value

def test_the_lr_pick_is_the_lowest_final_loss_and_widens_the_grid_at_its_edge():
    point = lambda loss, diverged=None: dict(final_val_loss=loss, diverged=diverged)
    assert sweep.pick_lr({1e-3: point(1.6), 2e-3: point(1.5), 4e-3: point(1.7)}) == (2e-3, None)
    assert sweep.pick_lr({1e-3: point(1.4), 2e-3: point(1.5), 4e-3: point(1.7)}) == (1e-3, 5e-4)
    assert sweep.pick_lr({1e-3: point(1.6), 2e-3: point(1.5), 4e-3: point(1.4)}) == (4e-3, 8e-3)
    # a diverged run is the worst, whatever loss it ended at; if all diverged there is nothing to widen toward
    assert sweep.pick_lr({1e-3: point(1.6), 2e-3: point(1.5), 4e-3: point(1.0, "nan")}) == (2e-3, None)
    assert sweep.pick_lr({1e-3: point(None, "nan"), 2e-3: point(None, "nan")})[1] is None


def curves_of(run_dir):
    evals = [r for r in train.read_log(Path(run_dir) / "log.jsonl") if "val_loss" in r]
    return [r["iter"] for r in evals], [r["val_loss"] for r in evals]


@pytest.fixture(scope="module")
def depth_trend(char_dataset, tmp_path_factory):
    """GPT and nGPT at 1 and 2 layers, every point's LR tuned (at 2 layers from x0.5 and x1 only), two seeds."""
    data_dir, name = char_dataset
    out = tmp_path_factory.mktemp("depth_trend")
    argv = ["--sweep", "n_layer=1,2", "--tune_lr", "--lr_grid", "2=0.5,1", "--models", "gpt,ngpt", "--seeds", "2",
            "--iters", "6",
            "--eval_interval", "2", "--out_dir", str(out), *TINY[2:], "--data_dir", data_dir, "--dataset", name]
    return argv, out, sweep.main(argv)


def test_a_tuned_trend_tries_each_models_lr_grid_at_seed_0_and_trains_seed_1_at_the_pick(depth_trend):
    _, out, results = depth_trend
    runs = {(r["key"], r["value"], r["seed"], r["config"]["learning_rate"]): r
            for r in (dict(r, config=json.loads((Path(r["dir"]) / "config.json").read_text()))
                      for r in results["runs"])}
    for key in ("gpt", "ngpt"):
        recipe = train.MODELS[key].RECIPE["learning_rate"]
        for value in ("1", "2"):
            tried = {lr: r["final_val_loss"] for (k, v, seed, lr), r in runs.items() if (k, v, seed) == (key, value, 0)}
            grid = {recipe / 2, recipe, recipe * 2} if value == "1" else {recipe / 2, recipe}
            best_of_grid = min(grid, key=tried.get)
            beyond = ({best_of_grid / 2} if best_of_grid == min(grid) else
                      {best_of_grid * 2} if best_of_grid == max(grid) else set())
            assert set(tried) == grid | beyond
            picked = results["picked_lr"][key][value]
            assert picked == min(tried, key=tried.get)
            assert [lr for (k, v, seed, lr) in runs if (k, v, seed) == (key, value, 1)] == [picked]
            assert results["models"][key]["points"][value]["seeds"] == [0, 1]
    table = (out / "results.md").read_text()
    assert "## Peak learning rates" in table and f"**{results['picked_lr']['ngpt']['2']:.3g}: " in table


def test_a_trends_speedups_are_recomputed_from_the_logged_curves_of_the_picked_runs(depth_trend):
    _, out, results = depth_trend
    for value in ("1", "2"):
        mean = {}
        for key in ("gpt", "ngpt"):
            dirs = [r["dir"] for r in results["runs"] if r["key"] == key and r["value"] == value
                    and r["dir"].endswith(f"-lr{results['picked_lr'][key][value]:g}-s{r['seed']}")]
            curves = [curves_of(d) for d in dirs]
            assert len(curves) == 2
            mean[key] = (curves[0][0], [sum(losses) / 2 for losses in zip(*(c[1] for c in curves))])
        target = mean["gpt"][1][-1]
        steps = compare.steps_to_reach(*mean["ngpt"], target)
        ngpt = results["speedups"][value]["ngpt"]
        assert ngpt["baseline"] == "gpt" and ngpt["target_loss"] == pytest.approx(target)
        assert ngpt["steps_to_target"] == pytest.approx(steps)
        assert ngpt["speedup"] == pytest.approx(compare.speedup(6, steps))
    assert (out / "sweep.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| model (baseline) | n_layer 1 | n_layer 2 |" in (out / "results.md").read_text()


def test_a_model_that_never_reaches_its_baselines_loss_is_compared_at_its_own_final_loss():
    base = dict(iters=[0, 100, 200], val_loss=[4.0, 2.0, 1.0])
    faster = sweep.to_the_same_loss(dict(iters=[0, 100, 200], val_loss=[4.0, 1.0, 0.8]), base, 1.0, 200.0)
    assert (faster["reached"], faster["steps_to_target"], faster["speedup"]) == (True, 100, 2.0)
    # the slower model ends at 1.5, which the baseline reaches halfway from step 100 to 200, at 150
    slower = sweep.to_the_same_loss(dict(iters=[0, 100, 200], val_loss=[4.0, 3.0, 1.5]), base, 1.0, 200.0)
    assert (slower["reached"], slower["target_loss"], slower["baseline_steps"]) == (False, 1.5, 150)
    assert slower["steps_to_target"] == 200 and slower["speedup"] == 0.75


def test_reuse_copies_the_finished_runs_of_another_folder_instead_of_training(depth_trend, tmp_path, capsys):
    argv, first_out, first = depth_trend
    capsys.readouterr()
    argv = [*argv[:argv.index("--out_dir")], "--out_dir", str(tmp_path), *argv[argv.index("--out_dir") + 2:]]
    second = sweep.main([*argv, "--reuse", str(first_out / "sweep")])
    out = capsys.readouterr().out
    assert "python train.py" not in out and out.count("has the same settings; copied into") == len(first["runs"])
    assert second["picked_lr"] == first["picked_lr"]
    assert second["speedups"] == first["speedups"]


def test_a_context_trend_keeps_the_tokens_per_step(char_dataset, tmp_path):
    data_dir, name = char_dataset
    small = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--eval_iters", "2", "--device", "cpu",
             "--dtype", "float32", "--data_dir", data_dir, "--dataset", name]
    results = sweep.main(["--sweep", "block_size=16,32", "--tokens_per_step", "64", "--seeds", "1", "--models",
                          "gpt,ngpt", "--iters", "12", "--eval_interval", "4", *small, "--out_dir", str(tmp_path)])
    table = (tmp_path / "results.md").read_text()
    assert "| context 16 (batch 4) | context 32 (batch 2) |" in table and "\n| nGPT (GPT) | " in table
    for r in results["runs"]:
        records = train.read_log(Path(r["dir"]) / "log.jsonl")
        assert {x["tokens"] / (x["iter"] + 1) for x in records if "loss" in x} == {64.0}


def test_a_length_trend_trains_each_length_and_counts_its_tokens_per_parameter(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = sweep.main(["--sweep", "max_iters=4,8", "--seeds", "1", "--models", "gpt,ngpt", "--out_dir",
                          str(tmp_path), *FEW, "--data_dir", data_dir, "--dataset", name])
    configs = [json.loads((Path(r["dir"]) / "config.json").read_text()) for r in results["runs"]]
    assert sorted(c["max_iters"] for c in configs) == [4, 4, 8, 8]
    gpt_at_8 = next(c for c in configs if c["model"] == "gpt" and c["max_iters"] == 8)
    per_parameter = 8 * gpt_at_8["tokens_per_iter"] / gpt_at_8["num_params"]
    assert f"| 8 steps ({per_parameter:.2g} tokens/param) |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("argv, expected", [
    (["--sweep", "max_iters=0,10"], "--sweep max_iters: the values must be positive integers, got 0,10"),
    (["--sweep", "max_iters=10", "--iters", "5"], "--sweep max_iters: the lengths are the values; leave out --iters"),
    (["--sweep", "learning_rate=1e-3,2e-3", "--tune_lr"], "--tune_lr tunes the learning rate at each value of another"),
    (["--sweep", "block_size=16,48", "--tokens_per_step", "64"], "expected context lengths that divide --tokens_per_step 64"),
    (["--sweep", "block_size=16,32", "--batch_size", "4"], "--batch_size is set by --sweep block_size"),
    (["--sweep", "n_layer=1,2", "--tokens_per_step", "64"], "--tokens_per_step goes with --sweep block_size"),
    (["--sweep", "n_layers=1,2"], "--sweep n_layers: not an option of train.py"),
    (["--sweep", "n_layer=1,2", "--tune_lr", "--lr_grid", "3=0.5,1"], "--lr_grid 3=0.5,1: expected VALUE=F1,F2"),
])
def test_a_bad_trend_gets_one_error_line_before_any_training(argv, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep.main([*argv, "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_bad_value_or_reuse_folder_gets_one_error_line(tmp_path):
    for argv, expected in ((["--sweep", "n_layer=0,2"], "experiments.sweep: error: --n_layer must be at least 1, got 0"),
                           (["--sweep", "n_layer=2", "--reuse", str(tmp_path / "none")], "no train.py run (config.json) in it")):
        result = run_script("-m", "experiments.sweep", *argv, "--out_dir", str(tmp_path / "out"))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert expected in result.stderr
    assert not (tmp_path / "out").exists()
