"""experiments/extrapolate.py: the validation loss of trained checkpoints past their training context, on tiny checkpoints."""

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
from experiments import extrapolate
import train

FEW = [*TINY, "--n_layer", "1"]  # one layer and a handful of steps: each run takes about a second on one core
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    results = extrapolate.main(["--factors", "1,2", "--runs", str(checkpoints), "--out_dir", str(tmp_path),
                                "--windows", "4"])
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
    results = extrapolate.main(["--factors", "2,400", "--runs", str(checkpoints / "gpt-s0"), "--out_dir", str(tmp_path),
                                "--windows", "2"])
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
    contexts = extrapolate.extrapolation_losses(LearnedPositions(), tokens, [1, 2], count=2, device="cpu")
    assert math.isfinite(contexts[1]["loss"])
    assert contexts[2]["refused"] == ("its learned position table has 8 positions, so it cannot go past its "
                                      "training length")


def test_rope_models_take_any_length():
    import gpt

    model = gpt.Model(gpt.Config(block_size=8, vocab_size=65, n_layer=1, n_head=2, n_embd=8))
    assert extrapolate.position_limit(model) is None
    assert model.rope_tables(64)[0].shape == (64, 2)  # the tables for 8x the training length


def test_bad_factors_get_one_error_line(checkpoints, capsys):
    with pytest.raises(SystemExit):
        extrapolate.main(["--factors", "0,two", "--runs", str(checkpoints)])
    assert "experiments.extrapolate: error: --factors 0,two: expected multiples of the training context" in \
        capsys.readouterr().err
