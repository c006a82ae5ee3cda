"""compare.py: the variants compared, steps to target and speedup on curves with known answers, its outputs on tiny
runs, and training them."""

import json

import numpy as np
import pytest

from conftest import TINY
import compare
import train

# one layer and 20 steps: enough for two distinct eval curves in a second or two per run
SHORT = [*TINY, "--n_layer", "1", "--max_iters", "20", "--eval_interval", "5"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("key", compare.VARIANTS)
def test_every_variant_is_a_model_file_and_options_that_train_py_accepts(key):
    file, options, name = compare.VARIANTS[key]
    assert file in train.MODELS and name and key in compare.COLORS
    parsed = vars(train.build_parser().parse_args(["--model", file, *options]))
    for option, text in zip(options[::2], options[1::2]):
        value = parsed[option[2:]]
        assert value == (train.parse_bool(text) if isinstance(value, bool) else type(value)(text)), option


def test_runs_are_named_by_the_variant_their_settings_match():
    gpt = train.resolve_settings(["--model", "gpt"])[0]
    assert compare.variant_of(gpt) == "gpt"
    assert compare.variant_of(dict(gpt, qk_norm="true")) == "gpt_qk"
    assert compare.variant_of(dict(gpt, qk_norm="rms")) == "gpt_qk_rms"
    assert compare.variant_of(dict(gpt, weight_decay=0.0)) == "gpt_no_wd"
    assert compare.variant_of(dict(gpt, decay_lr=False)) == "gpt_const_lr"
    assert compare.variant_of(dict(gpt, weight_decay=0.0, decay_lr=False)) == "gpt_no_wd_const_lr"  # the most specific
    older = {k: v for k, v in gpt.items() if k != "decay_lr"}  # a run logged before --decay_lr existed
    assert compare.variant_of(older) == "gpt"
    assert compare.variant_of(train.resolve_settings(["--model", "ngpt"])[0]) == "ngpt"


def test_run_folders_finds_runs_and_names_a_folder_without_any(tmp_path):
    for name in ("gpt-s0", "ngpt-s0"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "log.jsonl").write_text('{"iter": 0}\n\n{"iter": 1}\n')
    assert compare.run_folders([tmp_path / "runs"]) == [tmp_path / "runs" / "gpt-s0", tmp_path / "runs" / "ngpt-s0"]
    assert compare.run_folders([tmp_path / "runs" / "ngpt-s0"]) == [tmp_path / "runs" / "ngpt-s0"]
    assert train.read_log(tmp_path / "runs" / "gpt-s0" / "log.jsonl") == [{"iter": 0}, {"iter": 1}]
    with pytest.raises(train.ConfigError, match="no log.jsonl in it or in its subfolders"):
        compare.run_folders([tmp_path])


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
                    "--out_dir", str(root / folder), "--warmup", "0", *extra])
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


def test_the_same_command_again_reuses_complete_runs(char_dataset, tmp_path, capsys):
    data_dir, name = char_dataset
    argv = ["--iters", "4", "--seeds", "1", "--models", "gpt", "--out_dir", str(tmp_path),
            *TINY, "--n_layer", "1", "--data_dir", data_dir, "--dataset", name]
    first = compare.main(argv)
    second = compare.main(argv)
    assert "reusing the complete run" in capsys.readouterr().out
    assert second["runs"][0]["val_loss"] == first["runs"][0]["val_loss"]


def test_an_option_that_compare_sets_itself_is_refused_before_any_training(tmp_path):
    with pytest.raises(train.ConfigError, match="--seed is set for every run; use --seeds"):
        compare.main(["--seed", "3", "--out_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_a_run_trained_on_other_data_is_not_reused_and_one_line_says_why(tiny_shakespeare, tmp_path, capsys):
    import prepare_data

    data_dir, text = tmp_path / "data", tmp_path / "text.txt"
    text.write_text(tiny_shakespeare[:40_000])
    prepare_data.prepare_file(text, name="text", data_dir=data_dir)
    argv = ["--iters", "4", "--seeds", "1", "--models", "gpt", *TINY, "--n_layer", "1", "--data_dir", str(data_dir),
            "--dataset", "text"]
    compare.main([*argv, "--out_dir", str(tmp_path / "first")])
    assert json.loads((tmp_path / "first" / "runs" / "gpt-s0" / "config.json").read_text())["tokens_hash"] == \
        prepare_data.tokens_hash(data_dir / "text")
    text.write_text(tiny_shakespeare[40_000:80_000])  # another text under the same name
    prepare_data.prepare_file(text, name="text", data_dir=data_dir, force=True)
    with pytest.raises(train.ConfigError, match=r"runs/gpt-s0 holds a run trained on other data than .*text \(.*"
                                                r"tokens_hash \w+ there, \w+ now\); delete it or use another --out_dir"):
        compare.main([*argv, "--out_dir", str(tmp_path / "first")])
    capsys.readouterr()
    compare.main([*argv, "--out_dir", str(tmp_path / "second"), "--reuse", str(tmp_path / "first")])
    out = capsys.readouterr().out
    assert "not reused: " in out and "was trained on other data" in out and "python train.py" in out
