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


def test_it_trains_the_three_recipes_and_gpt_without_decay_at_a_constant_lr(char_dataset, tmp_path):
    data_dir, name = char_dataset
    models = norm_growth.main(["--iters", "4", "--seeds", "1", "--out_dir", str(tmp_path), *TINY, "--n_layer", "1",
                               "--eval_interval", "2", "--data_dir", data_dir, "--dataset", name])
    assert list(models) == ["gpt", "ngpt", "angpt", "gpt_const"]
    config = json.loads((tmp_path / "runs" / "gpt_const-s0" / "config.json").read_text())
    assert config["weight_decay"] == 0 and config["decay_lr"] is False
    assert (tmp_path / "heads.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_folder_without_runs_gets_one_error_line(tmp_path):
    result = run_script("-m", "experiments.norm_growth", "--runs", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"experiments.norm_growth: error: --runs {tmp_path}: no log.jsonl in it or in "
                                     f"its subfolders")
