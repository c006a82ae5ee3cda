"""The ablation switches of anGPT (Table L.1) and nGPT (Tables 4 to 6), the bf16 parameter storage, and
experiments/ablations.py, which runs them all: each switch changes the forward pass where it should."""

import json
import math

import pytest
import torch

import angpt
import ngpt
import train
from conftest import TINY
from experiments import ablations

VOCAB = 65
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(module, **overrides):
    args = dict(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)
    args.update(overrides)
    torch.manual_seed(0)
    return module.Model(module.Config(**args))


def block_inputs_and_outputs(model, idx):
    """(h before, h after) of every block."""
    seen = []
    hooks = [block.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
             for block in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    return seen


# -----------------------------------------------------------------------------
# anGPT, Table L.1

def test_without_lerp_each_residual_step_is_the_plain_sum():
    model = tiny(angpt, lerp=False)
    assert not any("alpha" in name for name, _ in model.named_parameters())  # nothing left unused
    h, out = block_inputs_and_outputs(model, torch.randint(0, VOCAB, (2, 16)))[0]
    block = model.transformer.h[0]
    tables = model.rope_tables(16)
    with torch.no_grad():
        after_attn = h + angpt.norm(block.attn(h, tables))
        expected = after_attn + angpt.norm(block.mlp(after_attn))
    assert torch.allclose(out, expected, atol=1e-6)


def test_without_the_residual_factor_the_step_is_the_plain_interpolation():
    h, h_block, alpha = torch.randn(3, 8), torch.randn(3, 8), torch.rand(8)
    step = lambda **options: angpt.Block(angpt.Config(n_embd=8, n_head=2, **options)).step(h, h_block, lambda: alpha)
    nu = 1 / torch.sqrt(alpha ** 2 + (1 - alpha) ** 2)
    assert torch.allclose(step(residual_factor=False), torch.lerp(h, h_block, alpha))
    assert torch.allclose(step(), torch.lerp(h, h_block, alpha) * nu)
    assert torch.allclose(step(residual_factor_mult=2.0), torch.lerp(h, h_block, alpha) * nu * 2)
    assert torch.allclose(step(residual_factor=False, residual_factor_mult=0.5), torch.lerp(h, h_block, alpha) * 0.5)
    assert torch.allclose(step(lerp=False), h + h_block)
    assert torch.allclose(step(lerp=False, no_lerp_nu=True), (h + h_block) / math.sqrt(2))

    full, plain = tiny(angpt), tiny(angpt, residual_factor=False)
    idx = torch.randint(0, VOCAB, (2, 16))
    h, out = block_inputs_and_outputs(plain, idx)[0]
    block, tables = plain.transformer.h[0], plain.rope_tables(16)
    with torch.no_grad():
        after_attn = torch.lerp(h, angpt.norm(block.attn(h, tables)), block.alpha_attn().abs())
        expected = torch.lerp(after_attn, angpt.norm(block.mlp(after_attn)), block.alpha_mlp().abs())
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(block_inputs_and_outputs(full, idx)[0][1], out)


def test_the_constant_factor_switches_act_on_nu_uz_the_one_not_followed_by_a_norm():
    assert tiny(angpt).transformer.h[0].mlp.nu_uz == pytest.approx(0.5)
    # x2 is also Table L.1's "no const. norm factors": nu_uz = 1
    assert tiny(angpt, const_factor_mult=2.0).transformer.h[0].mlp.nu_uz == 1.0


def test_all_factors_x2_makes_the_hidden_norm_grow_with_depth_at_init_and_the_full_model_keeps_it_near_one():
    idx = torch.randint(0, VOCAB, (2, 32))
    norms = lambda model: [out.norm(dim=-1).mean().item() for _, out in block_inputs_and_outputs(model, idx)]
    doubled = norms(tiny(angpt, n_layer=4, n_embd=128, n_head=4, const_factor_mult=2.0, residual_factor_mult=2.0))
    assert all(b > 3 * a for a, b in zip(doubled, doubled[1:]))  # two steps per block, each about x2
    assert all(0.7 < n < 1.3 for n in norms(tiny(angpt, n_layer=4, n_embd=128, n_head=4)))


# -----------------------------------------------------------------------------
# nGPT, Tables 4 to 6

def test_table_4_values_set_the_effective_init_and_the_stored_scale():
    d = 32
    model = tiny(ngpt, s_z_init="sqrt(d)", s_z_scale="1", s_qk_init="0.05", s_uv_init="1/sqrt(d)")
    assert torch.allclose(model.s_z(), torch.full((VOCAB,), math.sqrt(d)))
    assert torch.allclose(model.s_z.weight, torch.ones(VOCAB))  # stored at s_scale
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    assert torch.allclose(attn.s_qk(), torch.full((d,), 0.05))
    assert torch.allclose(attn.s_qk.weight, torch.full((d,), d ** -0.5))
    assert torch.allclose(mlp.s_uv(), torch.full((8 * d,), d ** -0.5))
    with pytest.raises(AssertionError, match="s_z_init must be a positive number"):
        tiny(ngpt, s_z_init="0")


def test_table_5_a_scalar_is_one_learned_value_and_a_fixed_value_is_not_learned():
    model = tiny(ngpt, s_qk_kind="scalar", s_uv_kind="value", s_z_kind="scalar", alpha_kind="scalar")
    block = model.transformer.h[0]
    for scale in (block.attn.s_qk, model.s_z, block.alpha_attn, block.alpha_mlp):
        assert scale.weight.shape == (1,) and scale.weight.requires_grad
    assert block.attn.s_qk().shape == (32,) and model.s_z().shape == (VOCAB,)
    assert not block.mlp.s_uv.weight.requires_grad
    learned = {id(p) for group in model.optimizer_groups(0.0) for p in group["params"]}
    assert id(block.mlp.s_uv.weight) not in learned and id(block.attn.s_qk.weight) in learned
    _, loss = model(torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16)))
    loss.backward()
    assert block.attn.s_qk.weight.grad.shape == (1,) and block.mlp.s_uv.weight.grad is None


def test_table_6_without_qk_norm_q_and_k_reach_the_attention_unnormalized(monkeypatch):
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append(k.detach()) or sdpa(q, k, v, **kw))
    idx = torch.randint(0, VOCAB, (2, 16))
    models = {qk_norm: tiny(ngpt, qk_norm=qk_norm) for qk_norm in ("true", "false")}
    with torch.no_grad():
        for model in models.values():
            model(idx)
        # the first layer's keys as c_attn makes them; rope turns them, which keeps their norms
        _, k, _ = models["false"].transformer.h[0].attn.c_attn(models["false"].transformer.wte(idx)).split(32, dim=2)
    normalized, raw = seen[0], seen[2]  # the first layer's keys of each model
    assert torch.allclose(normalized.norm(dim=-1), torch.ones(normalized.shape[:-1]), atol=1e-5)
    assert torch.allclose(raw.norm(dim=-1), k.view(2, 16, 2, 16).transpose(1, 2).norm(dim=-1), atol=1e-5)
    assert (raw.norm(dim=-1) - 1).abs().max() > 0.1


# -----------------------------------------------------------------------------
# The parameter dtype

def test_bf16_parameters_store_and_step_the_block_matrices_in_bf16_and_keep_the_scales_fp32(char_dataset, tmp_path):
    data_dir, name = char_dataset
    with pytest.raises(train.ConfigError, match="add --dtype bfloat16"):
        train.resolve_settings(["--model", "ngpt", *TINY, "--param_dtype", "bfloat16"])
    final = train.main(["--model", "ngpt", *TINY, "--dtype", "bfloat16", "--param_dtype", "bfloat16", "--max_iters",
                        "4", "--eval_interval", "4", "--data_dir", data_dir, "--dataset", name,
                        "--out_dir", str(tmp_path)])
    assert math.isfinite(final["val_loss"])
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    for name, p in ckpt["model"].items():
        in_blocks = name.startswith("transformer.h.") and p.dim() == 2
        assert p.dtype == (torch.bfloat16 if in_blocks else torch.float32), name
    moments = [state["exp_avg"].dtype for state in ckpt["optimizer"]["state"].values()]
    assert torch.bfloat16 in moments and torch.float32 in moments


def test_a_model_option_is_typed_by_the_model_it_belongs_to():
    assert train.resolve_settings(["--model", "angpt", "--s_z_init", "2"])[0]["s_z_init"] == 2.0
    assert train.resolve_settings(["--model", "ngpt", "--s_z_init", "sqrt(d)"])[0]["s_z_init"] == "sqrt(d)"
    with pytest.raises(train.ConfigError, match="--s_z_init: expected float, got 'sqrt"):
        train.resolve_settings(["--model", "angpt", "--s_z_init", "sqrt(d)"])
    with pytest.raises(train.ConfigError, match="--lerp: expected bool"):
        train.resolve_settings(["--model", "angpt", "--lerp", "maybe"])


# -----------------------------------------------------------------------------
# The experiment

def test_every_switch_of_the_tables_is_a_valid_train_py_command():
    for table, rows in ablations.TABLES.items():
        for row in rows:
            key = row[2]
            model, options, _ = ablations.compare.VARIANTS[key]
            train.resolve_settings(["--model", model, *options, *row[3]])


def test_the_relative_change_is_taken_seed_by_seed_and_a_single_seed_borrows_the_full_models_spread():
    # the same +2% at every seed: no error, though the two seeds of the full model differ by 10%
    change, error = ablations.relative_change({0: 1.02, 1: 1.122}, {0: 1.0, 1: 1.1, 2: 1.3})
    assert change == pytest.approx(2.0) and error == pytest.approx(0.0, abs=1e-9)
    change, error = ablations.relative_change({0: 1.02, 1: 1.0}, {0: 1.0, 1: 1.0})
    assert change == pytest.approx(1.0) and error == pytest.approx(100 * 0.02 / math.sqrt(2) / math.sqrt(2))
    one, one_error = ablations.relative_change({1: 1.1}, {0: 1.0, 1: 1.02})
    assert one == pytest.approx(100 * (1.1 / 1.02 - 1))
    assert one_error == pytest.approx(100 * 0.02 / math.sqrt(2) / 1.01)
    assert ablations.relative_change({3: 1.1}, {0: 1.0, 1: 1.02}) == (None, None)


def test_a_tiny_run_writes_the_table_and_the_plot_with_changes_from_the_logs(char_dataset, tmp_path):
    data_dir, name = char_dataset
    out = tmp_path / "abl"
    argv = ["--tables", "angpt", "--rows", "angpt_no_lerp,gpt_qk_f2", "--seeds", "2", "--iters", "6", *TINY,
            "--n_layer", "1", "--data_dir", data_dir, "--dataset", name, "--out_dir", str(out)]
    ablations.main(argv)
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["tables"]["angpt"]}
    assert list(rows) == ["angpt", "angpt_no_lerp", "gpt_qk_f2"]
    assert (out / "ablations.png").read_bytes().startswith(PNG_SIGNATURE)

    def final(row, seed):
        return [r["val_loss"] for r in train.read_log(out / "runs" / f"{row}-s{seed}" / "log.jsonl")
                if "val_loss" in r][-1]

    mean_final = lambda row: (final(row, 0) + final(row, 1)) / 2

    for row in ("angpt_no_lerp", "gpt_qk_f2"):
        changes = [100 * (final(row, seed) / final("angpt", seed) - 1) for seed in (0, 1)]
        assert rows[row]["change"] == pytest.approx(sum(changes) / 2)
    md = (out / "results.md").read_text()
    assert f"| no LERP (h + h_block) | `--lerp false` | 2 | {mean_final('angpt_no_lerp'):.4f} (" in md
    assert f"{rows['angpt_no_lerp']['change']:+.2f}% +- " in md and "| +1.89% |" in md
