"""anGPT-specific behaviour: Table 1 of the paper, four exact norms per block, h kept near unit norm by nu(alpha),
and weights in the unit ball.

The shared behaviour (shapes, causality, overfitting, initial loss, train.py end to end) is in test_models.py.
"""

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import angpt
import prepare_data
import train

VOCAB = 65


def tiny_model(**overrides):
    args = dict(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)
    args.update(overrides)
    torch.manual_seed(0)
    return angpt.Model(angpt.Config(**args))


def wide_model():
    # the constant nu(alpha) holds for independent high-dimensional vectors: width 256, as the paper's smallest model
    return tiny_model(block_size=64, n_layer=4, n_head=4, n_embd=256)


@pytest.fixture(scope="module")
def trained(char_dataset, tmp_path_factory):
    """(model, validation batch) after 300 steps of train.py on tiny Shakespeare, with anGPT's recipe."""
    data_dir, name = char_dataset
    out = tmp_path_factory.mktemp("angpt_run")
    train.main(["--model", "angpt", "--n_layer", "2", "--n_head", "4", "--n_embd", "128", "--block_size", "64",
                "--batch_size", "12", "--max_iters", "300", "--eval_interval", "300", "--eval_iters", "5",
                "--device", "cpu", "--dtype", "float32", "--data_dir", data_dir, "--dataset", name,
                "--out_dir", str(out)])
    model, _ = train.load_trained_model(out / "ckpt.pt")
    x, _ = train.token_windows(prepare_data.read_tokens(Path(data_dir) / name, "val"), 64, count=16, seed=0)
    return model, x


def inside_the_forward(model, idx, monkeypatch):
    """What the forward computes on its way: per block the mean ||h|| after it, the q and k that reach the attention
    with each head's gain g, and the block outputs h_a, h_m that the residual steps receive."""
    seen = dict(h=[], q=[], k=[], g=[], block_outputs=[])
    sdpa, step = F.scaled_dot_product_attention, angpt.Block.step

    def attention(q, k, v, **kwargs):
        seen["q"].append(q.detach())
        seen["k"].append(k.detach())
        return sdpa(q, k, v, **kwargs)

    def residual_step(block, h, h_block, alpha):
        seen["block_outputs"].append(h_block.detach())
        return step(block, h, h_block, alpha)

    monkeypatch.setattr(F, "scaled_dot_product_attention", attention)
    monkeypatch.setattr(angpt.Block, "step", residual_step)
    hooks = [block.register_forward_hook(lambda m, a, out: seen["h"].append(out.norm(dim=-1).mean().item()))
             for block in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    monkeypatch.undo()
    seen["g"] = [block.attn.g().detach() for block in model.transformer.h]  # (nh or 1, 1, 1)
    return seen


def assert_exact_norms(seen):
    assert len(seen["q"]) == len(seen["g"]) and len(seen["block_outputs"]) == 2 * len(seen["g"])
    for q, k, g in zip(seen["q"], seen["k"], seen["g"]):
        # k is a unit vector per head; q is one times the head's gain g, so the logits are g cos(q, k)
        assert torch.allclose(k.norm(dim=-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(q.norm(dim=-1) / g.view(-1, 1), torch.ones(()), atol=1e-5)
    for h_block in seen["block_outputs"]:
        assert torch.allclose(h_block.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_at_init_q_k_and_the_block_outputs_are_unit_vectors_and_h_is_near_unit_norm(monkeypatch):
    idx = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(1))
    seen = inside_the_forward(wide_model(), idx, monkeypatch)
    assert_exact_norms(seen)
    assert all(0.9 <= n <= 1.1 for n in seen["h"]), f"mean ||h|| after each block: {seen['h']}"


def test_after_training_q_k_and_the_block_outputs_are_still_unit_vectors(trained, monkeypatch):
    model, x = trained
    assert_exact_norms(inside_the_forward(model, x, monkeypatch))


def test_after_training_h_stays_near_unit_norm(trained, monkeypatch):
    # h is the one representation anGPT does not normalize: nu(alpha) is exact for independent h and h_block, and
    # trained blocks are not independent of their input. Measured after these 300 steps: 1.24 and 1.44 after the two
    # blocks (the earlier reading of the paper, without exact norms: 1.9 and 6.7). results/README.md states this range
    # beside the CPU preset's
    model, x = trained
    hidden = inside_the_forward(model, x, monkeypatch)["h"]
    assert all(1.1 <= n <= 1.6 for n in hidden), f"mean ||h|| after each block: {hidden}"


class CountNorms(TorchDispatchMode):
    """The aten operators the forward runs, and the inputs of those among them that compute a norm."""

    def __init__(self):
        super().__init__()
        self.ops, self.normalized = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if "norm" in func.__name__:
            self.normalized.append(args[0].detach().clone())
        return func(*args, **(kwargs or {}))


def test_the_forward_computes_four_norms_per_block_and_none_on_the_residual_stream():
    model = tiny_model(n_layer=3)  # d_head 16, d_model 32
    idx = torch.randint(0, VOCAB, (2, 16))
    sublayer_outputs = []
    hooks = [module.register_forward_hook(lambda m, a, out: sublayer_outputs.append(out.detach()))
             for block in model.transformer.h for module in (block.attn, block.mlp)]
    with CountNorms() as counter:
        model(idx, idx)
    for hook in hooks:
        hook.remove()
    assert counter.ops > 100  # the mode saw the whole forward
    assert len(counter.normalized) == 4 * 3
    heads = [x for x in counter.normalized if x.size(-1) == 16]  # q and k, per head
    outputs = [x for x in counter.normalized if x.size(-1) == 32]
    assert len(heads) == 2 * 3 and len(outputs) == 2 * 3
    # the d_model-sized norms are those of the attention and MLP outputs, in order: not of h
    for normalized, out in zip(outputs, sublayer_outputs):
        assert torch.equal(normalized.view_as(out), out)


def test_the_counter_sees_a_norm_added_to_the_residual_stream(monkeypatch):
    # the count above can fail: with a norm after every residual step (nGPT's), it sees two more per block
    step = angpt.Block.step
    monkeypatch.setattr(angpt.Block, "step", lambda block, *args: angpt.norm(step(block, *args)))
    model = tiny_model(n_layer=3)
    with CountNorms() as counter:
        model(torch.randint(0, VOCAB, (2, 16)))
    assert len(counter.normalized) == 6 * 3


def test_g_every_alpha_and_s_z_receive_a_gradient():
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    learned = {name: p.grad for name, p in model.named_parameters() if p.dim() == 1}
    assert {n.split(".")[-2] for n in learned} == {"g", "alpha_attn", "alpha_mlp", "s_z"}
    for name, grad in learned.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_the_gain_g_is_one_per_layer_starting_at_sqrt_d_head():
    model = tiny_model(n_head=4)
    for block in model.transformer.h:
        assert block.attn.g.weight.shape == (1,) and torch.allclose(block.attn.g.weight, torch.tensor(math.sqrt(8)))


def table_1(model, idx):
    """The anGPT column of the paper's Table 1 read literally, every factor of App. E computed where it stands."""
    tables = model.rope_tables(idx.size(1))
    h = model.transformer.wte(idx)
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        B, T, C = h.size()
        d_head, d_ff = attn.head_dim, 4 * C
        nu_qkv, nu_p, nu_uz, nu_acf, nu_d = math.sqrt(C / d_head), 1.0, math.sqrt(C / d_ff), 3.74, math.sqrt(d_ff / C)
        q, k, v = (attn.c_attn(h) * nu_qkv).split(C, dim=2)                   # q, k, v <- W_qkv h nu_qkv
        q, k, v = (t.view(B, T, attn.n_head, d_head).transpose(1, 2) for t in (q, k, v))
        q, k = angpt.apply_rope(q, tables), angpt.apply_rope(k, tables)
        k = k / k.norm(dim=-1, keepdim=True)                                    # k <- norm(k)
        q = q / q.norm(dim=-1, keepdim=True)                                    # q <- norm(q)
        logits = (q @ k.transpose(-2, -1)) * attn.g()                           # A <- softmax(q k^T g)
        A = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        h_a = attn.c_proj((A @ v).transpose(1, 2).reshape(B, T, C)) * nu_p     # h_a <- W_p(A v) nu_p
        h_a = h_a / h_a.norm(dim=-1, keepdim=True)                              # h_a <- norm(h_a)
        a = block.alpha_attn().abs()
        h = (h + a * (h_a - h)) / torch.sqrt(a ** 2 + (1 - a) ** 2)             # h <- (h + a (h_a - h)) nu(a)
        u, z = (mlp.c_fc(h) * nu_uz).chunk(2, dim=-1)                           # u, z <- W_uz h nu_uz
        h_m = u * F.silu(z) * nu_acf                                            # h_m <- u SiLU(z) nu_acf
        h_m = mlp.c_proj(h_m) * nu_d                                            # h_m <- W_d h_m nu_d
        h_m = h_m / h_m.norm(dim=-1, keepdim=True)                              # h_m <- norm(h_m)
        a = block.alpha_mlp().abs()
        h = (h + a * (h_m - h)) / torch.sqrt(a ** 2 + (1 - a) ** 2)
    return model.s_z() * model.lm_head(h)                                       # logits <- s_z (W_h h)


@pytest.mark.parametrize("options", [dict(), dict(rope_fraction=0.5)])
def test_the_forward_is_table_1_with_the_factors_that_cancel_left_out(options):
    model = tiny_model(n_layer=3, n_head=4, n_embd=64, **options)
    with torch.no_grad():  # away from the initialization, so that nothing holds by symmetry
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(2))
    logits, _ = model(idx, idx)
    with torch.no_grad():
        expected = table_1(model, idx)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_the_residual_factor_keeps_independent_unit_vectors_at_unit_norm():
    # sec. 4.2: E||(1 - a) h + a h_a||^2 = (1 - a)^2 + a^2 for independent unit h, h_a; nu(a) undoes it, per channel
    g = torch.Generator().manual_seed(0)
    h, h_block = (F.normalize(torch.randn(256, 1024, generator=g), dim=-1) for _ in range(2))
    block = angpt.Block(angpt.Config(n_embd=1024, n_head=16))
    for alpha in (0.01, 0.05, 0.3, 0.5, 0.9):
        mixed = block.step(h, h_block, lambda: torch.full((1024,), alpha))
        assert abs(mixed.norm(dim=-1).mean().item() - 1.0) < 0.01, alpha


def row_norms(model):
    return {name: p.norm(dim=1) for name, p in model.named_parameters() if p.dim() == 2}


def test_every_matrix_starts_with_unit_rows_along_its_input_axis():
    model = tiny_model()
    norms = row_norms(model)
    assert set(norms) == {"transformer.wte.weight", "lm_head.weight"} | {
        f"transformer.h.{l}.{m}.weight" for l in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    for name, n in norms.items():
        assert torch.allclose(n, torch.ones_like(n), atol=1e-6), name


def test_after_step_projects_rows_into_the_unit_ball_and_leaves_rows_inside_untouched():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                # rows 0, 2, 4, ... pushed outside the ball, rows 1, 3, ... pulled inside, in varying amounts
                factor = torch.linspace(0.2, 3.0, p.size(0))
                p.mul_(torch.where(torch.arange(p.size(0)) % 2 == 0, 1.0 + factor, 1.0 / (1.0 + factor))[:, None])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.after_step()
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert torch.equal(p, before[name]), f"{name}: the scale vectors are not constrained"
            continue
        norms = p.norm(dim=1)
        assert bool((norms <= 1 + 1e-6).all()), name
        inside = before[name].norm(dim=1) <= 1
        assert bool(inside.any()) and bool((~inside).any())
        assert torch.equal(p[inside], before[name][inside]), f"{name}: rows inside the ball must not move"
        # rows outside go to the sphere, along the same direction
        assert torch.allclose(norms[~inside], torch.ones_like(norms[~inside]), atol=1e-6)
        cosine = F.cosine_similarity(p[~inside], before[name][~inside], dim=1)
        assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-6)


def test_after_training_every_row_is_in_the_unit_ball(trained):
    model, _ = trained
    for name, n in row_norms(model).items():
        assert bool((n <= 1 + 1e-6).all()), name
