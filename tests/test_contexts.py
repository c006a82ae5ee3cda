"""experiments/contexts.py: every model at several context lengths with the same tokens per step."""

import json

import pytest

import compare
from experiments import contexts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_contexts_keep_the_tokens_per_step_and_give_speedups_that_the_logs_recompute(char_dataset, tmp_path):
    data_dir, name = char_dataset
    small = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--eval_iters", "2", "--device", "cpu",
             "--dtype", "float32", "--data_dir", data_dir, "--dataset", name]
    contexts.main(["--contexts", "16,32", "--tokens-per-step", "64", "--seeds", "1", "--models", "gpt,ngpt",
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
        contexts.main([*argv, "--out_dir", str(tmp_path)])
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
