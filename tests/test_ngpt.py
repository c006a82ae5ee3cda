"""nGPT-specific behaviour: agreement with NVIDIA's code, the unit sphere, and the scale parameters.

The shared behaviour (shapes, causality, overfitting, initial loss, train.py end to end) is in test_models.py.
"""

import math

import pytest
import torch

from conftest import LOCAL_DATA
import ngpt
import train

# tensors from NVIDIA's nGPT on a tiny model (README.md beside the file says how they were made); its license keeps
# them out of this repo, so only a checkout with the developers' test data beside it has them
GOLDEN = LOCAL_DATA / "ngpt_golden" / "ngpt_golden.pt"
needs_golden = pytest.mark.skipif(
    not GOLDEN.exists(), reason=f"no golden tensors of NVIDIA's nGPT at {GOLDEN} (they cannot be shipped in this "
    "repo); every other nGPT test still runs")
VOCAB = 65


def tiny_model(**overrides):
    args = dict(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)
    args.update(overrides)
    torch.manual_seed(0)
    return ngpt.Model(ngpt.Config(**args))


def train_steps(model, steps, lr=1e-2):
    """A few AdamW steps on random tokens with train.py's train_step."""
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=lr, betas=(0.9, 0.95))
    torch.manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, model.config.vocab_size, (4, 17))
        train.train_step(model, optimizer, [(idx[:, :-1], idx[:, 1:])], grad_clip=1.0)


def from_official(state_dict, n_layer):
    """NVIDIA/ngpt's parameter names -> ours. The raw scale vectors carry over as they are, because our Scale
    modules use the same s_init and s_scale as NVIDIA's code (so the effective values match too)."""
    ours = {"transformer.wte.weight": state_dict["transformer.wte.weight"],
            "lm_head.weight": state_dict["lm_head.weight"],
            "s_z.weight": state_dict["sz"]}
    for l in range(n_layer):
        theirs, mine = f"transformer.h.{l}.", f"transformer.h.{l}."
        qkv = [state_dict[theirs + w + ".weight"] for w in ("query", "key", "value")]
        ours[mine + "attn.c_attn.weight"] = torch.cat(qkv)  # (3C, C), rows in q, k, v order
        ours[mine + "attn.c_proj.weight"] = state_dict[theirs + "att_c_proj.weight"]
        ours[mine + "mlp.c_fc.weight"] = state_dict[theirs + "c_fc.weight"]
        ours[mine + "mlp.c_proj.weight"] = state_dict[theirs + "mlp_c_proj.weight"]
        ours[mine + "alpha_attn.weight"] = state_dict[theirs + "attn_alpha"]
        ours[mine + "alpha_mlp.weight"] = state_dict[theirs + "mlp_alpha"]
        ours[mine + "attn.s_qk.weight"] = state_dict[theirs + "sqk"]
        ours[mine + "mlp.s_uv.weight"] = state_dict[theirs + "suv"]
    return ours


def golden_model(rope):
    golden = torch.load(GOLDEN, weights_only=True)
    c = golden["config"]
    config = ngpt.Config(block_size=c["block_size"], vocab_size=c["vocab_size"], n_layer=c["n_layer"],
                         n_head=c["n_head"], n_embd=c["n_embd"], rope=rope, alpha_init=c["alpha_init"])
    assert config.base_scale == c["base_scale"]
    model = ngpt.Model(config)
    model.load_state_dict(from_official(golden["state_dict"], c["n_layer"]), strict=True)
    return model, golden


@needs_golden
@pytest.mark.parametrize("rope", ["reference", "standard"])
def test_logits_and_loss_match_nvidia_ngpt(rope):
    model, golden = golden_model(rope)
    logits, loss = model(golden["idx"], golden["targets"])
    assert (logits - golden[rope]["logits"]).abs().max() < 1e-5
    assert abs(loss.item() - golden[rope]["loss"].item()) < 1e-6
    last, _ = model(golden["idx"])  # without targets: the last position only
    assert (last - golden[rope]["logits"][:, -1:]).abs().max() < 1e-5


@needs_golden
@pytest.mark.parametrize("rope", ["reference", "standard"])
def test_one_training_step_matches_nvidia_ngpt(rope):
    # NVIDIA's recipe for one step: clip the gradient norm at 1, Adam (AdamW, weight decay 0), renormalize
    model, golden = golden_model(rope)
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    train.train_step(model, optimizer, [(golden["idx"], golden["targets"])], grad_clip=1.0)
    expected = from_official(golden[rope]["state_dict_after_step"], golden["config"]["n_layer"])
    for name, p in model.state_dict().items():
        assert (p - expected[name]).abs().max() < 1e-4, name
    _, loss = model(golden["idx"], golden["targets"])
    assert abs(loss.item() - golden[rope]["loss_after_step"].item()) < 1e-5


def test_hidden_states_stay_on_the_unit_sphere_after_every_block():
    model = tiny_model()
    outputs = []
    model.transformer.wte.register_forward_hook(lambda module, args, out: outputs.append(out))
    for block in model.transformer.h:
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
    idx = torch.randint(0, VOCAB, (2, 24))
    for trained in (False, True):
        if trained:
            train_steps(model, 3)
        outputs.clear()
        with torch.no_grad():
            model(idx, idx)
        assert len(outputs) == 1 + model.config.n_layer
        for h in outputs:
            assert (h.norm(dim=-1) - 1).abs().max() < 1e-5


def normalized_axes(model):
    """{name: the axis of length n_embd} for every matrix: dim 1 of (out, n_embd), dim 0 of (n_embd, in)."""
    axes = {"transformer.wte.weight": 1, "lm_head.weight": 1}
    for l in range(model.config.n_layer):
        axes.update({f"transformer.h.{l}.attn.c_attn.weight": 1, f"transformer.h.{l}.mlp.c_fc.weight": 1,
                     f"transformer.h.{l}.attn.c_proj.weight": 0, f"transformer.h.{l}.mlp.c_proj.weight": 0})
    return axes


def assert_on_the_sphere(model):
    params = dict(model.named_parameters())
    for name, dim in normalized_axes(model).items():
        assert params[name].size(dim) == model.config.n_embd
        assert (params[name].norm(dim=dim) - 1).abs().max() < 1e-5, name


def test_after_step_puts_every_matrix_back_on_the_sphere_and_leaves_the_scales_alone():
    model = tiny_model()
    matrices = {name for name, p in model.named_parameters() if p.dim() == 2}
    assert matrices == set(normalized_axes(model))
    assert_on_the_sphere(model)  # at construction

    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-2, betas=(0.9, 0.95))
    torch.manual_seed(1)
    for _ in range(3):  # Adam's steps alone, so that after_step() has something to undo
        idx = torch.randint(0, model.config.vocab_size, (4, 17))
        model(idx[:, :-1], idx[:, 1:])[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        params = dict(model.named_parameters())
        drift = max((params[name].norm(dim=dim) - 1).abs().max().item()
                    for name, dim in normalized_axes(model).items())
        assert drift > 1e-3  # Adam's step took the matrices off the sphere...
        scales = {name: p.clone() for name, p in params.items() if p.dim() == 1}
        model.after_step()
        assert_on_the_sphere(model)  # ...and after_step put them back
        for name, value in scales.items():
            assert torch.equal(params[name], value), name


def test_scale_parameters_have_the_documented_raw_and_effective_initial_values():
    C = 64
    model = tiny_model(n_embd=C, n_head=4)
    base_scale = 1 / math.sqrt(C)
    assert model.config.base_scale == pytest.approx(base_scale)
    # name: (effective value as the forward uses it, documented raw value, documented effective value)
    expected = {"s_z.weight": (model.s_z(), base_scale, 1.0)}
    for l, block in enumerate(model.transformer.h):
        expected.update({
            f"transformer.h.{l}.alpha_attn.weight": (block.alpha_attn().abs(), base_scale, 0.05),
            f"transformer.h.{l}.alpha_mlp.weight": (block.alpha_mlp().abs(), base_scale, 0.05),
            f"transformer.h.{l}.attn.s_qk.weight": (block.attn.s_qk(), base_scale, 1.0),
            # s_u and s_v: the MLP multiplies the Scale by sqrt(n_embd)
            f"transformer.h.{l}.mlp.s_uv.weight": (block.mlp.s_uv() * math.sqrt(C), 1.0, math.sqrt(C)),
        })
    scales = {name: p for name, p in model.named_parameters() if p.dim() == 1}
    assert set(scales) == set(expected)  # every vector parameter is one of nGPT's scales
    for name, (value, raw, effective) in expected.items():
        assert torch.allclose(scales[name], torch.full_like(value, raw)), name
        assert torch.allclose(value, torch.full_like(value, effective)), name


def test_scaling_the_u_half_of_s_uv_changes_nothing():
    # why one s_uv vector (NVIDIA's) is equivalent to the paper's separate s_u and s_v: the MLP output is linear
    # in u, and the block normalizes it, so a uniform factor on u (such as the extra sqrt(n_embd)) cancels
    model = tiny_model()
    train_steps(model, 2)  # away from the init, where s_uv is uniform
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        before, _ = model(idx, idx)
        for block in model.transformer.h:
            block.mlp.s_uv.weight[: 4 * model.config.n_embd] *= 3.0
        after, _ = model(idx, idx)
        assert (after - before).abs().max() < 1e-5
        block.mlp.s_uv.weight[-1] *= 3.0  # the gate half does matter
        assert (model(idx, idx)[0] - before).abs().max() > 1e-4


def test_the_sign_of_the_eigen_learning_rates_does_not_matter():
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        before, _ = model(idx, idx)
        for block in model.transformer.h:
            block.alpha_attn.weight.neg_()
            block.alpha_mlp.weight.neg_()
        assert torch.equal(model(idx, idx)[0], before)


def test_norm_has_the_value_and_gradient_of_x_over_its_length():
    """ngpt.norm runs PyTorch's weight-norm kernel; it must be x / ||x|| along the last dim, value and derivative.
    Compared in fp32 against the plain formula in fp64; non-contiguous input too (q and k are transposed views)."""
    x = torch.randn(3, 5, 16, dtype=torch.float64).transpose(0, 1).requires_grad_()
    g = torch.randn(5, 3, 16, dtype=torch.float64)
    x32 = x.detach().float().requires_grad_()
    y = ngpt.norm(x32)
    (by_kernel,) = torch.autograd.grad(y, x32, g.float())
    reference = x / x.norm(dim=-1, keepdim=True)
    (by_autograd,) = torch.autograd.grad(reference, x, g)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(by_kernel.double(), by_autograd, rtol=0, atol=1e-5)
