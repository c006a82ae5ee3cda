"""experiments/norm_growth.py: the norm-growth report of Merrill et al. 2021 over finished runs, and the runs it trains."""

import json

import numpy as np
import pytest

from conftest import TINY, run_script
from experiments import norm_growth
import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_norm_growth_exponent_is_one_half_for_sqrt_t_and_zero_for_a_constant_norm():
    steps = np.arange(10, 2001, 10)
    assert norm_growth.norm_growth_exponent(steps, 3.0 * np.sqrt(steps)) == pytest.approx(0.5, abs=0.01)
    assert norm_growth.norm_growth_exponent(steps, np.full(len(steps), 90.5)) == pytest.approx(0.0, abs=1e-9)
    assert norm_growth.norm_growth_exponent(steps, 0.1 * steps) == pytest.approx(1.0, abs=0.01)
    # only the second half counts: a norm flat until step 1000 and growing like t afterwards has a slope near 1
    late_growth = np.where(steps < 1000, 100.0, 0.1 * steps)
    assert norm_growth.norm_growth_exponent(steps, late_growth) == pytest.approx(1.0, abs=0.01)
    assert norm_growth.norm_growth_exponent([10, 20], [1.0, 2.0]) is None


def test_the_growth_fit_recovers_a_and_b_of_a_sqrt_t_curve_and_prefers_it_to_the_other_laws():
    steps = np.arange(9, 2000, 10)  # step records: iter 9, 19, ... are steps 10, 20, ...
    fits = norm_growth.fit_growth(steps, 2.5 * np.sqrt(steps + 1) + 17.0)
    a, b, r2 = fits["sqrt(t)"]
    assert (a, b, r2) == (pytest.approx(2.5), pytest.approx(17.0), pytest.approx(1.0))
    assert all(fit[2] < 0.999 for law, fit in fits.items() if law != "sqrt(t)")
    assert norm_growth.fit_growth(steps, 0.1 * (steps + 1) + 3)["t"][2] == pytest.approx(1.0)


def test_saturated_heads_are_argmax_like_at_one_position_and_mean_like_near_all():
    # context 64: queries 16 to 63 see 40.5 positions on average
    assert norm_growth.saturated_head_classes([1.0, 1.2, 40.0, 25.0, 5.0], 64) == (2, 2, 1)


def test_heads_are_argmax_like_mean_like_or_in_between():
    heads = dict(count_c10=[1.0, 1.4, 30.0, 4.0], f_eff=[0.02, 0.03, 0.9, 0.2])
    assert norm_growth.head_classes(heads) == (2, 1, 1)


def test_the_report_plots_and_tabulates_finished_runs(char_dataset, tmp_path):
    data_dir, name = char_dataset
    for model in ("gpt", "ngpt"):
        train.main(["--model", model, *TINY, "--n_layer", "1", "--max_iters", "20", "--eval_interval", "5",
                    "--log_interval", "1", "--data_dir", data_dir, "--dataset", name,
                    "--out_dir", str(tmp_path / "runs" / model)])
    out = tmp_path / "out"
    norm_growth.main(["--runs", str(tmp_path / "runs"), "--out_dir", str(out)])

    for png in ("norms.png", "saturation.png", "heads.png"):
        assert (out / png).read_bytes().startswith(PNG_SIGNATURE)
    table = (out / "results.md").read_text()
    assert "every parameter but the embeddings" in table and "| r2: sqrt(t) |" in table
    assert "\n| GPT | all parameters x 1000 | " in table and "\n| nGPT | attention logits x 100 | " in table
    # every number recomputed from the logs: the norm curve, its late slope, the last saturation and ||h||
    records = train.read_log(tmp_path / "runs" / "gpt" / "log.jsonl")
    steps = [r for r in records if "param_norm" in r]
    last_eval = [r for r in records if "val_loss" in r][-1]
    exponent = norm_growth.norm_growth_exponent([r["iter"] for r in steps], [r["param_norm"] for r in steps])
    final_norm = f"| GPT | {steps[0]['param_norm']:.1f} (step {steps[0]['iter'] + 1}) | {steps[-1]['param_norm']:.1f} |"
    assert final_norm in table and f"| {exponent:.3f} |" in table
    saturation = " ".join(f"{v:.2f}" for v in last_eval["saturation"])
    assert f" -> {saturation} |" in table
    assert " -> " + " ".join(f"{v:.2f}" for v in last_eval["hidden_norm"]) + " |" in table
    assert "python -m experiments.norm_growth --runs" in table


def test_it_trains_the_three_recipes_and_gpt_without_weight_decay_at_a_constant_lr_and_with_both(char_dataset,
                                                                                                    tmp_path):
    data_dir, name = char_dataset
    models = norm_growth.main(["--iters", "4", "--seeds", "1", "--out_dir", str(tmp_path), *TINY, "--n_layer", "1",
                               "--eval_interval", "2", "--data_dir", data_dir, "--dataset", name])
    assert list(models) == ["gpt", "ngpt", "angpt", "gpt_no_wd", "gpt_const_lr", "gpt_no_wd_const_lr"]
    settings = {key: json.loads((tmp_path / "runs" / f"{key}-s0" / "config.json").read_text())
                for key in ("gpt_no_wd", "gpt_const_lr", "gpt_no_wd_const_lr")}
    assert {key: (s["weight_decay"], s["decay_lr"]) for key, s in settings.items()} == {
        "gpt_no_wd": (0, True), "gpt_const_lr": (0.1, False), "gpt_no_wd_const_lr": (0, False)}
    assert (tmp_path / "heads.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_folder_without_runs_gets_one_error_line(tmp_path):
    result = run_script("-m", "experiments.norm_growth", "--runs", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"experiments.norm_growth: error: --runs {tmp_path}: no log.jsonl in it or in "
                                     f"its subfolders")
