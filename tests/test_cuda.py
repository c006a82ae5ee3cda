"""The one-GPU path: every model under bf16 autocast on CUDA, torch.compile there, nGPT's norm kernel, fused AdamW,
and train.py end to end with a resume. Skipped without a CUDA GPU; `python -m experiments.verify` runs them on one."""

import importlib
import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")

SIZES = dict(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)


def cuda_model(name, **options):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    model = module.Model(module.Config(**SIZES, **options)).to("cuda")
    model.after_step()
    return module, model


def batch(rows=4):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randint(0, SIZES["vocab_size"], (rows, SIZES["block_size"]), device="cuda", generator=g)
    return x, torch.roll(x, -1, dims=1)


@pytest.mark.parametrize("name", train.MODELS)
def test_forward_and_backward_under_bf16_autocast(name):
    _, model = cuda_model(name)
    x, y = batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss = model(x, y)
    assert logits.shape == (*x.shape, SIZES["vocab_size"])
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(SIZES["vocab_size"])) < 1.0  # near uniform
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the stored weights in fp32


@pytest.mark.parametrize("name", train.MODELS)
def test_the_forward_compiles_on_cuda_without_graph_breaks(name):
    _, model = cuda_model(name)
    x, y = batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(x, y)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        eager = model(x, y)[1]
        compiled = torch.compile(model)(x, y)[1]
    assert compiled.item() == pytest.approx(eager.item(), rel=2e-2)  # bf16: the kernels differ, not the function


def test_ngpts_norm_on_cuda_is_x_over_its_length_within_bf16():
    ngpt = importlib.import_module("ngpt")
    x = torch.randn(8, 64, 384, device="cuda").to(torch.bfloat16)
    expected = x.float() / x.float().norm(dim=-1, keepdim=True)
    got = ngpt.norm(x)
    assert got.dtype == torch.float32  # computed in fp32 whatever the input
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(8, 64, device="cuda"), atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # and under autocast, as in training
        torch.testing.assert_close(ngpt.norm(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", train.MODELS)
def test_train_builds_fused_adamw_on_cuda_and_it_steps_as_the_plain_one(name):
    s, _ = train.resolve_settings(["--model", name, "--device", "cuda", "--preset", "cpu"])
    s.update(SIZES)

    def build():
        run = train.Run(s, data=SimpleNamespace(vocab_size=SIZES["vocab_size"], folder=None))
        train.build_model(run, checkpoint=None)
        return run.raw_model, run.optimizer

    model, optimizer = build()
    assert optimizer.defaults["fused"] is True
    plain_model, _ = build()
    plain = torch.optim.AdamW(plain_model.optimizer_groups(s["weight_decay"]), lr=s["learning_rate"],
                              betas=(s["beta1"], s["beta2"]), eps=s["eps"])
    x, y = batch()
    for m, opt in ((model, optimizer), (plain_model, plain)):
        train.train_step(m, opt, [(x, y)], s["grad_clip"])
    for (name_, fused_p), plain_p in zip(model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(fused_p, plain_p, rtol=1e-4, atol=1e-6, msg=name_)


def counting_dataset(folder, vocab_size=SIZES["vocab_size"]):
    """Ids that count up in steps of 7, in nanoGPT's format: learnable within a few steps, and nothing to fetch, so
    this runs on a machine without network."""
    folder.mkdir(parents=True)
    for split, count in (("train", 50_000), ("val", 10_000)):
        (np.arange(count) * 7 % vocab_size).astype(np.uint16).tofile(folder / f"{split}.bin")
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": vocab_size}))


def test_a_short_run_on_cuda_writes_its_log_and_checkpoint_and_resumes(tmp_path):
    counting_dataset(tmp_path / "data" / "counting")
    common = ["--model", "ngpt", "--device", "cuda", "--dtype", "bfloat16", "--compile", "true", "--n_layer", "2",
              "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--batch_size", "8", "--max_iters", "20",
              "--eval_interval", "10", "--eval_iters", "2", "--log_interval", "1", "--data_dir",
              str(tmp_path / "data"), "--dataset", "counting"]
    whole = train.main([*common, "--out_dir", str(tmp_path / "whole")])
    train.main([*common, "--out_dir", str(tmp_path / "parts"), "--max_iters_per_launch", "10"])
    parts = train.main([*common, "--out_dir", str(tmp_path / "parts"), "--resume"])
    for run in ("whole", "parts"):
        assert (tmp_path / run / "log.jsonl").exists() and (tmp_path / run / "ckpt.pt").exists()
    checkpoint = torch.load(tmp_path / "parts" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 20 and checkpoint["rng_cuda"] is not None
    # On CPU resume is bit-exact (test_train.py). CUDA's kernels are not bitwise reproducible run to run (atomic adds
    # in the embedding's backward, autotuned split-K matmuls under torch.compile), so two uninterrupted runs already
    # differ in their last bits; the pinned tolerance is bf16's resolution, 2^-8 relative
    first = next(r for r in map(json.loads, (tmp_path / "whole" / "log.jsonl").open()) if "val_loss" in r)
    assert whole["val_loss"] < first["val_loss"] - 0.5  # it learns: a resume from a fresh model would be 0.2 higher
    assert parts["val_loss"] == pytest.approx(whole["val_loss"], rel=2**-8)
