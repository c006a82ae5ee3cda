"""norms.py: the saturation, attention-head and parameter-norm metrics of Merrill et al. 2021 (Definition 1, secs. 3 and 4)."""

import math


import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import norms
import train

SIZES = dict(block_size=32, vocab_size=65, n_layer=3, n_head=2, n_embd=32)


def fresh(name, **options):
    torch.manual_seed(0)
    module = train.MODELS[name]
    return module.Model(module.Config(**SIZES, **options))


def probe(batch=4, length=32):
    return torch.randint(0, SIZES["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))


class UnitBlock(nn.Module):
    """x -> Norm(W x): the same output for W and c W, whatever c > 0."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return F.normalize(self.proj(x), dim=-1)


class ScaleInvariantNet(nn.Module):
    """A network whose every block output is exactly invariant to scaling all parameters."""

    def __init__(self, vocab_size=65, dim=16, n_layer=3):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(vocab_size, dim),
                                              h=nn.ModuleList([UnitBlock(dim) for _ in range(n_layer)])))

    def forward(self, idx):
        h = self.transformer.wte(idx)
        for block in self.transformer.h:
            h = block(h)
        return h


def test_a_scale_invariant_network_is_its_own_saturated_version():
    torch.manual_seed(0)
    sat = norms.saturation(ScaleInvariantNet(), probe(), "params")
    assert sat == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_a_random_init_gpt_is_far_from_its_saturated_version():
    sat = norms.saturation(fresh("gpt"), probe(), "params")
    assert len(sat) == SIZES["n_layer"] and all(math.isfinite(s) for s in sat)
    assert max(sat) < 0.5  # random init is far from saturated (Merrill et al., sec. 4.1, Fig. 2)


@pytest.mark.parametrize("name", train.MODELS)
def test_the_metrics_leave_the_live_model_as_it_was(name):
    model = fresh(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sdpa = F.scaled_dot_product_attention
    norms.eval_metrics(model, probe())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert F.scaled_dot_product_attention is sdpa  # the probe put the attention back


def outputs_with_logits_times(model, idx, c):
    """The block outputs with every attention logit multiplied by c."""
    with norms.attention_probe(logit_mult=c):
        return norms.block_outputs(model, idx)


def test_the_gpt_logit_multiplier_is_the_same_as_scaling_w_q():
    """For a bias-free GPT, logits x c equals W_q x c: the multiplier reaches the right place."""
    model, idx, c = fresh("gpt"), probe(), 7.0
    multiplied = outputs_with_logits_times(model, idx, c)
    params = dict(model.named_parameters())
    for layer in range(SIZES["n_layer"]):
        name = f"transformer.h.{layer}.attn.c_attn.weight"
        w_q_scaled = params[name].clone()
        w_q_scaled[: SIZES["n_embd"]] *= c
        params = dict(params, **{name: w_q_scaled})
    scaled = norms.block_outputs(model, idx, params)
    for a, b in zip(multiplied, scaled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_ngpt_logit_multiplier_is_the_same_as_scaling_s_qk_by_sqrt_c():
    model, idx, c = fresh("ngpt"), probe(), 9.0
    multiplied = outputs_with_logits_times(model, idx, c)
    params = {name: p * math.sqrt(c) if name.endswith("s_qk.weight") else p for name, p in model.named_parameters()}
    for a, b in zip(multiplied, norms.block_outputs(model, idx, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_one_hot_head_counts_one_position_and_a_uniform_head_counts_all():
    T, t_min = 32, 8
    uniform = torch.zeros(1, 1, T, T)
    one_hot = torch.zeros(1, 1, T, T)
    one_hot[..., 3] = 1e4  # every query puts all its weight on key 3 (queries t >= t_min all see it)
    positions = torch.arange(t_min, T).float() + 1  # query t sees t + 1 keys
    u = norms.head_stats(uniform, t_min)
    assert u["n_eff"][0] == pytest.approx(positions.mean().item(), rel=1e-4)
    assert u["f_eff"][0] == pytest.approx(1.0, rel=1e-4)
    assert u["count_c10"][0] == u["count_c100"][0] == pytest.approx(positions.mean().item())
    assert u["logit_std"][0] == pytest.approx(0.0, abs=1e-6)
    h = norms.head_stats(one_hot, t_min)
    assert h["n_eff"][0] == pytest.approx(1.0, abs=1e-4)
    assert h["count_c10"][0] == h["count_c100"][0] == 1.0
    assert h["f_eff"][0] == pytest.approx((1 / positions).mean().item(), rel=1e-3)
    # the count of the saturated network (Merrill et al.'s, at temperature 1), for the last query, which sees T keys
    assert norms.head_stats(uniform, T - 1, counts_at=(1,))["count_c1"] == [T]
    assert norms.head_stats(one_hot, T - 1, counts_at=(1,))["count_c1"] == [1]


def test_head_statistics_ignore_the_future_keys():
    """A huge logit on a key after the query must not count: the causal mask comes before the softmax."""
    T, t_min = 16, 4
    logits = torch.zeros(1, 1, T, T)
    logits[..., T - 1] = 1e4  # only the last query can see the last key
    stats = norms.head_stats(logits, t_min)
    positions = torch.arange(t_min, T).float() + 1
    expected = torch.cat((positions[:-1], torch.ones(1))).mean().item()  # uniform, except the last query: one-hot
    assert stats["n_eff"][0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", train.MODELS)
def test_the_eval_metrics_have_one_value_per_layer_and_head(name):
    metrics = norms.eval_metrics(fresh(name), probe())
    L, H = SIZES["n_layer"], SIZES["n_head"]
    assert len(metrics["saturation"]) == len(metrics["saturation_attn"]) == len(metrics["attn_logit_std"]) == L
    assert all(-1 <= s <= 1 + 1e-6 for s in metrics["saturation"] + metrics["saturation_attn"])
    assert metrics["saturation_kind"] == ("all parameters x 1000" if name == "gpt" else "attention logits x 100")
    for field in ("n_eff", "f_eff", "count_c10", "count_c100", "logit_std"):
        assert len(metrics["heads"][field]) == L and all(len(layer) == H for layer in metrics["heads"][field])
    assert len(metrics["heads_saturated"]) == L and all(len(layer) == H for layer in metrics["heads_saturated"])
    assert all(1 <= c <= SIZES["block_size"] for layer in metrics["heads_saturated"] for c in layer)
    # at init GPT's logits are near 0 (std about 0.01), so its heads are uniform; nGPT and anGPT bring the logits to
    # variance about 1 on purpose, which still spreads every head over more than half of the positions it sees
    f_eff = [f for layer in metrics["heads"]["f_eff"] for f in layer]
    assert all(f > 0.99 for f in f_eff) if name == "gpt" else all(0.5 < f < 0.95 for f in f_eff)
    assert all(s < 0.05 for s in metrics["attn_logit_std"]) if name == "gpt" else all(
        0.7 < s < 1.3 for s in metrics["attn_logit_std"])


@pytest.mark.parametrize("name", train.MODELS)
def test_the_norm_group_holds_every_parameter_but_the_embeddings_gains_included(name):
    model = fresh(name)
    tracked = {id(p) for _, p in norms.norm_group(model)}
    names = [n for n, p in model.named_parameters() if id(p) in tracked]
    assert names == [n for n, p in model.named_parameters() if not n.startswith(("transformer.wte", "lm_head"))]
    assert any(p.dim() == 1 for _, p in norms.norm_group(model))  # the gains (nGPT, anGPT: the scale vectors)


def test_alignment_is_1_for_a_step_along_the_parameters_and_minus_1_against_them():
    theta = [torch.randn(4, 3), torch.randn(3)]
    group = [(0, p) for p in theta]
    for factor, alignment in ((1.1, 1.0), (0.9, -1.0)):
        before = [p / factor for p in theta]  # the step theta - before points along (or against) before
        assert norms.norm_metrics(group, before, None)["alignment"] == pytest.approx(alignment, abs=1e-6)
    sideways = [theta[0] + torch.randn(4, 3) * 1e-3, theta[1]]
    assert abs(norms.norm_metrics(group, sideways, None)["alignment"]) < 1


@pytest.mark.parametrize("name", train.MODELS)
def test_the_recorded_logits_are_what_the_softmax_sees(name):
    """Every layer's recorded logits, with the causal mask and a softmax, give back the attention's output."""
    model, idx = fresh(name), probe(batch=2)
    seen = []
    hooks = [block.attn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
             for block in model.transformer.h]
    logits = norms.attention_logits(model, idx)
    for hook in hooks:
        hook.remove()
    assert len(logits) == SIZES["n_layer"]
    causal = torch.ones(idx.size(1), idx.size(1), dtype=torch.bool).tril()
    weights = logits[0].masked_fill(~causal, float("-inf")).softmax(-1)  # (B, nh, T, T) of the first layer
    attn = model.transformer.h[0].attn
    B, T, C = seen[0].shape
    v = attn.c_attn(seen[0]).split(C, dim=2)[2].view(B, T, SIZES["n_head"], -1).transpose(1, 2)
    expected = attn.c_proj((weights @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(seen[0], model.rope_tables(T)), expected, rtol=1e-4, atol=1e-5)


def test_a_minimal_model_written_to_the_readme_interface_is_measured(char_dataset, tmp_path, monkeypatch):
    """A model file with only what the README's interface asks for: train.py logs its norm metrics."""
    (tmp_path / "tinymodel.py").write_text(MINIMAL_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tinymodel

    monkeypatch.setitem(train.MODELS, "tinymodel", tinymodel)
    data_dir, name = char_dataset
    train.main(["--model", "tinymodel", "--max_iters", "4", "--eval_interval", "2", "--log_interval", "2",
                "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
                "--eval_iters", "2", "--data_dir", data_dir, "--dataset", name, "--out_dir", str(tmp_path / "run"),
                "--learning_rate", "1e-3", "--device", "cpu"])
    records = train.read_log(tmp_path / "run" / "log.jsonl")
    steps, evals = [r for r in records if "loss" in r], [r for r in records if "val_loss" in r]
    assert steps and all(math.isfinite(r["param_norm"]) and len(r["param_norm_layers"]) == 2 for r in steps)
    last = evals[-1]
    assert last["saturation_kind"] == "all parameters x 1000" and len(last["saturation"]) == 2
    assert len(last["heads"]["n_eff"]) == 2 and all(len(layer) == 2 for layer in last["heads"]["n_eff"])
    assert len(last["hidden_norm"]) == 2 and len(last["heads_saturated"]) == 2


MINIMAL_MODEL = """
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

RECIPE = dict(learning_rate=1e-3, min_lr_ratio=0.0, warmup=0, weight_decay=0.0, beta1=0.9, beta2=0.95,
              eps=1e-8, grad_clip=1.0)


@dataclass
class Config:
    block_size: int = 32
    vocab_size: int = 65
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.qkv, self.out = c.n_head, nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)

    def forward(self, h):
        B, T, C = h.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(h).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.out(y.transpose(1, 2).reshape(B, T, C))


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.n_embd),
                                              h=nn.ModuleList(Block(config) for _ in range(config.n_layer))))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        h = self.transformer.wte(idx)
        for block in self.transformer.h:
            h = block(h)
        logits = self.lm_head(h)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def optimizer_groups(self, weight_decay):
        return [dict(params=list(self.parameters()), weight_decay=weight_decay)]

    def after_step(self):
        pass

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        return idx
"""
