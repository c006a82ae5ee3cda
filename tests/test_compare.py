"""compare.py: steps-to-target and speedup on curves with known answers, its outputs on tiny runs, training mode."""

import json

import numpy as np
import pytest

from conftest import TINY
import compare
import norms
import train

# one layer and 20 steps: enough for two distinct eval curves in a second or two per run
SHORT = [*TINY, "--n_layer", "1", "--max_iters", "20", "--eval_interval", "5"]
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


def test_the_norm_growth_exponent_is_one_half_for_sqrt_t_and_zero_for_a_constant_norm():
    steps = np.arange(10, 2001, 10)
    assert norms.norm_growth_exponent(steps, 3.0 * np.sqrt(steps)) == pytest.approx(0.5, abs=0.01)
    assert norms.norm_growth_exponent(steps, np.full(len(steps), 90.5)) == pytest.approx(0.0, abs=1e-9)
    assert norms.norm_growth_exponent(steps, 0.1 * steps) == pytest.approx(1.0, abs=0.01)
    # only the second half counts: a norm flat until step 1000 and growing like t afterwards has a slope near 1
    late_growth = np.where(steps < 1000, 100.0, 0.1 * steps)
    assert norms.norm_growth_exponent(steps, late_growth) == pytest.approx(1.0, abs=0.01)
    assert norms.norm_growth_exponent([10, 20], [1.0, 2.0]) is None


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

    # the parameter norms: a plot, a table, and an exponent recomputable from the stored per-run series
    assert (out / "norms.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| model | first logged | final | final / first | late log-log slope |" in table
    gpt_runs = [r for r in results["runs"] if r["key"] == "gpt"]
    mean_norm = np.mean([r["param_norm"] for r in gpt_runs], axis=0)
    assert models["gpt"]["norms"]["param_norm"] == pytest.approx(mean_norm.tolist())
    assert models["gpt"]["norms"]["exponent"] == pytest.approx(
        norms.norm_growth_exponent(gpt_runs[0]["norm_iters"], mean_norm))

    # saturation and attention heads: two plots, a table, and the per-layer values of the runs' last eval records
    for name in ("saturation.png", "heads.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "## Saturation and attention heads" in table and "| GPT | all parameters x 1000 | " in table
    final_evals = [train.read_log(two_runs / "a" / "log.jsonl")[-1]]
    assert models["gpt"]["saturation"]["final"] == pytest.approx(final_evals[0]["saturation"], abs=1e-5)
    assert models["gpt"]["saturation"]["first_iter"] == 0  # the fresh model: the random-init reference
    assert len(models["gpt"]["saturation"]["heads_final"]["n_eff"]) == 1 * 2  # layers x heads, one seed
    # the hidden-state norm after each block, from the same eval records
    assert "## Hidden-state norm" in table
    assert models["gpt"]["hidden_norm"]["final"] == pytest.approx(final_evals[0]["hidden_norm"], abs=1e-4)


def test_runs_are_named_by_the_variant_their_settings_match():
    gpt = train.resolve_settings(["--model", "gpt"])[0]
    assert compare.variant_of(gpt) == "gpt"
    assert compare.variant_of(dict(gpt, qk_norm="true")) == "gpt_qk"
    assert compare.variant_of(dict(gpt, qk_norm="rms")) == "gpt_qk_rms"
    assert compare.variant_of(dict(gpt, weight_decay=0.0, decay_lr=False)) == "gpt_const"
    assert compare.variant_of(dict(gpt, weight_decay=0.0)) == "gpt"  # decaying LR: not the sqrt(t) setting
    older = {k: v for k, v in gpt.items() if k != "decay_lr"}  # a run logged before --decay_lr existed
    assert compare.variant_of(older) == "gpt"
    assert compare.variant_of(train.resolve_settings(["--model", "ngpt"])[0]) == "ngpt"


def test_heads_are_argmax_like_mean_like_or_in_between():
    heads = dict(count_c10=[1.0, 1.4, 30.0, 4.0], f_eff=[0.02, 0.03, 0.9, 0.2])
    assert norms.head_classes(heads) == (2, 1, 1)


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
    assert list(results["models"]) == [k for k in compare.NORMS_KEYS if compare.VARIANTS[k][0] in train.MODELS]
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
