"""compare.py --sweep and --extrapolate: the papers' claims beyond convergence speed, on tiny runs and checkpoints."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
import compare
import train

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


@pytest.fixture(scope="module")
def checkpoints(char_dataset, tmp_path_factory):
    """A folder of three tiny runs, GPT, nGPT and anGPT, each with its ckpt.pt (context 32)."""
    data_dir, name = char_dataset
    root = tmp_path_factory.mktemp("checkpoints")
    for model in ("gpt", "ngpt", "angpt"):
        train.main(["--model", model, *FEW, "--max_iters", "4", "--eval_interval", "4", "--data_dir", data_dir,
                    "--dataset", name, "--out_dir", str(root / f"{model}-s0")])
    return root


def test_extrapolation_at_twice_the_context_reports_a_finite_loss_for_each_model(checkpoints, tmp_path):
    results = compare.main(["--extrapolate", "1,2", "--runs", str(checkpoints), "--out_dir", str(tmp_path),
                            "--extrapolate-windows", "4"])
    assert list(results["models"]) == ["gpt", "ngpt", "angpt"]
    for m in results["models"].values():
        assert m["contexts"][2]["context"] == [64]
        assert math.isfinite(m["contexts"][2]["loss"]["mean"])
        assert math.isfinite(m["contexts"][2]["loss_beyond"]["mean"])  # positions 32..63
        assert m["contexts"][1]["loss_beyond"] is None  # no position past the training length at 1x
    assert (tmp_path / "extrapolation.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| 2x (64) | " in (tmp_path / "results.md").read_text()


def test_a_context_longer_than_the_validation_data_is_refused_and_the_others_still_run(checkpoints, tmp_path):
    # the validation split holds 10,000 tokens; 400 x 32 = 12,800
    results = compare.main(["--extrapolate", "2,400", "--runs", str(checkpoints / "gpt-s0"), "--out_dir", str(tmp_path),
                            "--extrapolate-windows", "2"])
    (evaluation,) = results["checkpoints"]
    assert evaluation["contexts"][400]["refused"] == ("the validation split has 10,000 tokens, too few for one window "
                                                      "of 12,800 (12,801 with its next-token target)")
    assert math.isfinite(evaluation["contexts"][2]["loss"])
    table = (tmp_path / "results.md").read_text()
    assert "| 400x (12800) | refused |" in table and "at 400x (12,800 tokens): the validation split has" in table


class LearnedPositions(torch.nn.Module):
    """nanoGPT's way to encode positions, a learned table of block_size rows, in a model of one layer."""

    def __init__(self, block_size=8, vocab_size=65, n_embd=8):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.transformer = torch.nn.ModuleDict(dict(wte=torch.nn.Embedding(vocab_size, n_embd),
                                                    wpe=torch.nn.Embedding(block_size, n_embd)))
        self.lm_head = torch.nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1))
        return self.lm_head(self.transformer.wte(idx) + self.transformer.wpe(pos)), None


def test_a_learned_position_table_says_it_cannot_go_past_its_training_length():
    tokens = torch.randint(65, (1000,)).numpy()
    contexts = compare.extrapolation_losses(LearnedPositions(), tokens, [1, 2], count=2, device="cpu")
    assert math.isfinite(contexts[1]["loss"])
    assert contexts[2]["refused"] == ("its learned position table has 8 positions, so it cannot go past its "
                                      "training length")


def test_rope_models_take_any_length():
    import gpt

    model = gpt.Model(gpt.Config(block_size=8, vocab_size=65, n_layer=1, n_head=2, n_embd=8))
    assert compare.position_limit(model) is None
    assert model.rope_tables(64)[0].shape == (64, 2)  # the tables for 8x the training length
