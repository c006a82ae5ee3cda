"""
nGPT: the Normalized Transformer, whose representations all live on the unit hypersphere.

Loshchilov, Hsieh, Sun, Ginsburg, "nGPT: Normalized Transformer with Representation Learning on the
Hypersphere", arXiv 2410.01131 (ICLR 2025), and NVIDIA's reference code github.com/NVIDIA/ngpt (model.py and
the weight normalization in train.py, commit ed19eb2). This file is gpt.py with nGPT's changes, so that
`diff gpt.py ngpt.py` shows the paper:
  - no norm layers: the token embeddings, the output embeddings (lm_head) and every row or column of every
    matrix along its n_embd axis have unit norm, and the model keeps them there itself (after_step()),
  - the hidden state h is a unit vector; a block does not add its output to h but moves h a learned step
    alpha toward the normalized output and normalizes again (eq. 10-11),
  - q and k are normalized per head and scaled by s_qk, and the softmax scale is +sqrt(d_head),
  - the SwiGLU's u and v are rescaled by s_u and s_v * sqrt(n_embd), the logits by s_z,
  - no weight decay and no warmup (RECIPE).

Where the paper's symbols live. Each is a Scale: stored ("raw") at s_scale and multiplied by s_init/s_scale in
the forward, so that it starts at s_init and Adam's steps on it are s_init/s_scale times larger in effect (the
paper's trick for giving these vectors their own effective learning rate):
  symbol    parameter                                 shape                 s_init (effective)  s_scale (raw)
  alpha_A   transformer.h.{l}.alpha_attn.weight       (n_embd,)             0.05, then abs()    1/sqrt(n_embd)
  alpha_M   transformer.h.{l}.alpha_mlp.weight        (n_embd,)             0.05, then abs()    1/sqrt(n_embd)
  s_qk      transformer.h.{l}.attn.s_qk.weight        (n_embd,) = (nh, hs)  1                   1/sqrt(n_embd)
  s_u, s_v  transformer.h.{l}.mlp.s_uv.weight         (8 n_embd,): u, v     1, x sqrt(n_embd)   1
  s_z       s_z.weight                                (vocab_size,)         1                   1/sqrt(n_embd)
Table 4's other s_init and s_scale, and Table 5's scalars and fixed values in place of these vectors, are options
(s_qk_init, s_qk_kind, ...; experiments/ablations.py runs them). The raw values mean what NVIDIA's attn_alpha,
mlp_alpha, sqk, suv and sz mean, so its state_dict loads into this model after renaming (and concatenating query,
key, value into c_attn; tests/test_ngpt.py does it).

Choices where the paper and the official code differ, or where either is unclear:
  - rope="standard" (default) is true RoPE, the paper's choice. rope="reference" is the element-wise
    transform that NVIDIA's code calls rotary (not a rotation, not relative; NVIDIA/ngpt issue #10): use it
    to agree with that code. q and k are normalized after it, as there.
  - s_u and s_v are one vector s_uv for both halves of c_fc's output, times sqrt(n_embd) on both, as in the
    code. The paper scales only v by sqrt(n_embd). The two define the same function of the parameters: the
    MLP output is linear in u, so a uniform factor on u is removed by the normalization of the output.
  - h <- Norm(h + alpha (Norm(block(h)) - h)) as in eq. (10), with NVIDIA's extra Norm(h) in the mix: a no-op
    on the value of h, but it changes the gradient that reaches the token embeddings (Block.forward).
  - alpha_init = 0.05, the code's and the paper's value ("in order of 1/n_layers"), not 1/n_layer.
  - Norm(x) = x / ||x|| without an epsilon, as the code (NVIDIA/ngpt issue #7); computed in fp32.
  - Parameters are stored in fp32, as gpt.py's (NVIDIA's code stores the block matrices in bf16 since commit
    6dcc109); under bf16 autocast the matmuls and attention still run in bf16, as NVIDIA's flash attention.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# The paper recipe, read by train.py (any of it can be overridden on the command line).
# nGPT paper, Table 3 (nGPT column) and NVIDIA's train.py: Adam (AdamW with weight decay 0), no warmup, cosine
# annealing to a final LR of 0, betas (0.9, 0.95), and gradient clipping at 1.0 (the code's; the paper is silent).
RECIPE = dict(
    learning_rate=8e-3,  # peak LR, tuned on the CPU preset (results/README.md, "Learning rates")
    min_lr_ratio=0.0,    # cosine decays to learning_rate * min_lr_ratio
    warmup=0,
    weight_decay=0.0,    # the sphere bounds the weights; decay would only fight the normalization
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,            # AdamW's default, as NVIDIA's code
    grad_clip=1.0,
)


def norm(x):
    """x / ||x|| along the last dim, in fp32 and without an epsilon, by PyTorch's fused weight-norm kernel (the op
    behind torch.nn.utils.parametrizations.weight_norm: g v / ||v|| for every row v, here with g = 1). One pass
    forward and one backward, where the written-out formula is about ten small ops."""
    x = x.float()
    rows = x.reshape(-1, x.size(-1))
    return torch._weight_norm(rows, rows.new_ones(rows.size(0), 1), 0).view(x.shape)


class Scale(nn.Module):
    """A learned vector whose effective value is its stored value times s_init/s_scale (nGPT's s_init, s_scale).

    Stored at s_scale, it starts at s_init; a small s_scale makes Adam's steps on it s_init/s_scale times larger
    in effect (its learning rate is effectively scaled up). The ablations of Table 5: kind "scalar" learns one value
    for all dim entries, kind "value" keeps it fixed at s_init.
    """

    def __init__(self, dim, s_init, s_scale, kind="vector"):
        super().__init__()
        self.s_init, self.s_scale, self.dim = s_init, s_scale, dim
        self.weight = nn.Parameter(torch.full((dim if kind == "vector" else 1,), float(s_scale)),
                                   requires_grad=kind != "value")

    def forward(self):
        return (self.weight * (self.s_init / self.s_scale)).expand(self.dim)


def table_value(config, field):
    """An s_init or s_scale as the paper's Table 4 writes it: a number, "sqrt(d)" or "1/sqrt(d)", with d = n_embd."""
    text = getattr(config, field)
    named = {"sqrt(d)": config.n_embd ** 0.5, "1/sqrt(d)": config.n_embd ** -0.5}
    value = named[text] if text in named else float(text) if text.replace(".", "", 1).isdigit() else 0.0
    assert value > 0, f"{field} must be a positive number, sqrt(d) or 1/sqrt(d), not {text!r}"
    return value


def rope_tables(rope, seq_len, rope_dim, device):
    """The two (seq_len, rope_dim/2) tables that apply_rope needs, in fp32, for the first rope_dim dimensions of a
    head (all of them, or rope_fraction of them: the frequencies span the rotated dimensions, as in GPT-NeoX)."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freq = 10000.0 ** (-torch.arange(0, rope_dim, 2, device=device, dtype=torch.float32) / rope_dim)
    angle = torch.outer(pos, freq)  # (T, rope_dim/2): position p times frequency w_j
    if rope == "standard":
        return angle.cos(), angle.sin()
    # NVIDIA's table interleaves sin and cos, E[p, 2j] = sin(p w_j), E[p, 2j+1] = cos(p w_j), then splits
    # it in halves along the last dim; both halves still mix frequencies.
    table = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)  # (T, rope_dim)
    return table[:, : rope_dim // 2], table[:, rope_dim // 2 :]


def apply_rope(rope, x, tables):
    """Position-dependent transform of q or k, x: (B, nh, T, hs), on the first rope_dim dimensions of each head,
    as many as the tables cover; the rest pass through unchanged."""
    a, b = tables  # each (T, rope_dim/2)
    x, x_pass = x[..., : 2 * a.size(-1)], x[..., 2 * a.size(-1) :]
    if rope == "standard":
        # rotate the pair (x[j], x[j + rope_dim/2]) by the angle p * w_j; norms and relative offsets preserved
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * a - x2 * b, x2 * a + x1 * b, x_pass), dim=-1).type_as(x)
    # reference: out[2i] = -x[2i+1] * b[p, i], out[2i+1] = x[2i] * a[p, i]; no cos/sin sum, so it is
    # neither norm-preserving nor relative, and zeroes every even pair at p = 0 (NVIDIA/ngpt issue #10)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((torch.stack((-x_odd * b, x_even * a), dim=-1).flatten(-2), x_pass), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.rope = config.rope
        self.qk_norm = config.qk_norm
        # query, key and value projections for all heads in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # s_qk: one scale per head and channel, init 1
        self.s_qk = Scale(config.n_embd, table_value(config, "s_qk_init"), table_value(config, "s_qk_scale"),
                          config.s_qk_kind)

    def forward(self, x, tables):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rope(self.rope, q, tables), apply_rope(self.rope, k, tables)
        # q <- Norm(q) s_qk, k <- Norm(k) s_qk, per head, after the positional transform. Only their dot product is
        # used, sum_i s_qk_i^2 Norm(q)_i Norm(k)_i, so s_qk^2 is applied to q alone: one multiply fewer
        s_qk = self.s_qk().view(self.n_head, 1, self.head_dim)  # (nh, 1, hs), broadcast over B and T
        if self.qk_norm == "true":  # "false": Table 6, "nGPT - QK norm" (s_qk and the softmax scale stay)
            q, k = norm(q), norm(k)
        q = (s_qk * s_qk) * q
        # q.k is now s_qk^2 times a cosine, whose variance is about 1/hs for random directions: the softmax scale
        # becomes +sqrt(hs) instead of 1/sqrt(hs), to bring the attention logits back to variance 1
        y = F.scaled_dot_product_attention(q.type_as(v), k.type_as(v), v, is_causal=True,
                                           scale=math.sqrt(self.head_dim))
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        # SwiGLU: u and the gate v come from one matrix of 2 * 4 * n_embd rows (NVIDIA's c_fc)
        self.c_fc = nn.Linear(config.n_embd, 2 * 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        # s_u and s_v in one vector: its first 4 n_embd entries scale u, the rest scale v
        self.s_uv = Scale(2 * 4 * config.n_embd, table_value(config, "s_uv_init"), table_value(config, "s_uv_scale"),
                          config.s_uv_kind)
        self.sqrt_n_embd = math.sqrt(config.n_embd)

    def forward(self, x):
        # u <- u s_u, v <- v s_v sqrt(n_embd): each entry of v is a cosine, where SiLU is nearly linear,
        # and sqrt(n_embd) brings it back to where SiLU bends (NVIDIA's code scales u by sqrt(n_embd) too: the Norm of
        # the block's output removes it). Applied to the rows of c_fc, which is cheaper than to its output
        scale = (self.s_uv() * self.sqrt_n_embd).unsqueeze(1)  # (8 n_embd, 1): one factor per row
        u, v = F.linear(x, self.c_fc.weight * scale).chunk(2, dim=-1)
        return self.c_proj(u * F.silu(v))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        # the eigen learning rates alpha_A and alpha_M: per-channel step sizes toward the block outputs
        self.alpha_attn = Scale(config.n_embd, config.alpha_init, config.base_scale, config.alpha_kind)
        self.alpha_mlp = Scale(config.n_embd, config.alpha_init, config.base_scale, config.alpha_kind)

    def forward(self, h, tables):
        # eq. (10-11): h <- Norm(h + alpha_A (h_A - h)), h_A = Norm(Attn(h)), then the same with h_M = Norm(MLP(h));
        # torch.lerp(a, b, w) = a + w (b - a) in one op. abs() keeps the eigen learning rates positive (the paper
        # reports the same results for signed ones, appendix A.2). Norm(h) in the first step, as NVIDIA's code: the
        # same value, but its backward removes the gradient's component along h, which the token embeddings see
        h = norm(torch.lerp(norm(h), norm(self.attn(h, tables)), self.alpha_attn().abs()))
        h = norm(torch.lerp(h, norm(self.mlp(h)), self.alpha_mlp().abs()))
        return h


@dataclass
class Config:
    block_size: int = 1024     # context length the model is trained on
    vocab_size: int = 50304    # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    rope: str = "standard"     # positional encoding: "standard" RoPE, or NVIDIA's "reference" transform
    rope_fraction: float = 1.0  # the fraction of each head's dimensions that rope turns (anGPT paper, Table F.2: 0.5)
    alpha_init: float = 0.05   # initial eigen learning rates alpha_A, alpha_M (paper and NVIDIA's code)
    # the ablations of the paper's Tables 4 to 6, each off the full model by one switch (experiments/ablations.py);
    # s_init and s_scale as Table 4 writes them, d = n_embd
    s_qk_init: str = "1"
    s_qk_scale: str = "1/sqrt(d)"
    s_uv_init: str = "1"
    s_uv_scale: str = "1"
    s_z_init: str = "1"
    s_z_scale: str = "1/sqrt(d)"
    s_qk_kind: str = "vector"  # Table 5: a learned "vector" per entry, one learned "scalar", or a fixed "value"
    s_uv_kind: str = "vector"
    s_z_kind: str = "vector"
    alpha_kind: str = "vector"
    qk_norm: str = "true"      # "false": Table 6, q and k not normalized

    @property
    def base_scale(self):
        # 1/sqrt(n_embd): the init std of the matrices and the s_scale of alpha (and of s_qk and s_z by default).
        # Derived, not an option: NVIDIA's GPTConfig defaults it to 1/sqrt(1024), silently wrong for any other width
        return self.n_embd ** -0.5


class Model(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        assert config.rope in ("standard", "reference"), f"rope must be standard or reference, not {config.rope!r}"
        assert 0 < config.rope_fraction <= 1, f"rope_fraction must be above 0 and at most 1, not {config.rope_fraction}"
        assert config.qk_norm in ("true", "false"), f"qk_norm must be true or false, not {config.qk_norm!r}"
        for field in ("s_qk_kind", "s_uv_kind", "s_z_kind", "alpha_kind"):
            kind = getattr(config, field)
            assert kind in ("vector", "scalar", "value"), f"{field} must be vector, scalar or value, not {kind!r}"
        self.rope_dim = 2 * max(1, round(config.n_embd // config.n_head * config.rope_fraction / 2))  # whole pairs
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # not tied to wte
        # s_z: the logits are cosines in [-1, 1]; s_z restores their temperature, per vocabulary entry
        self.s_z = Scale(config.vocab_size, table_value(config, "s_z_init"), table_value(config, "s_z_scale"),
                         config.s_z_kind)
        # init all matrices N(0, 1/sqrt(n_embd)) and the residual projections N(0, 1/sqrt(n_embd)/sqrt(2 * n_layer))
        # as NVIDIA's code; only the directions matter, since after_step() puts every row on the sphere
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=config.base_scale / math.sqrt(2 * config.n_layer))
        self.after_step()
        # positional tables for the training length; buffers follow .to(device) but stay out of checkpoints
        rope_a, rope_b = rope_tables(config.rope, config.block_size, self.rope_dim, "cpu")
        self.register_buffer("rope_a", rope_a, persistent=False)
        self.register_buffer("rope_b", rope_b, persistent=False)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=self.config.base_scale)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def rope_tables(self, seq_len):
        if seq_len <= self.rope_a.size(0):
            return self.rope_a[:seq_len], self.rope_b[:seq_len]
        # longer than the training context (length extrapolation): compute the tables afresh
        return rope_tables(self.config.rope, seq_len, self.rope_dim, self.rope_a.device)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        tables = self.rope_tables(T)
        h = self.transformer.wte(idx)  # (B, T, C), unit rows
        for block in self.transformer.h:
            h = block(h, tables)
        # no final norm: h is already a unit vector
        # z = (E_output h) s_z, with s_z applied to the rows of E_output: a (vocab_size, n_embd) matrix is smaller than
        # the (tokens, vocab_size) logits when a batch has more than n_embd tokens, so this is cheaper
        output_embedding = self.lm_head.weight * self.s_z().unsqueeze(1)  # (vocab_size, n_embd)
        if targets is None:
            # inference: only the last position's logits are needed
            return F.linear(h[:, [-1], :], output_embedding), None
        logits = F.linear(h, output_embedding)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def optimizer_groups(self, weight_decay):
        """AdamW parameter groups: weight decay on matrices (and embeddings), none on the scale vectors.

        nGPT's recipe has weight_decay 0, so both groups are plain Adam; the split keeps the interface.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
            dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0),
        ]

    @torch.no_grad()
    def after_step(self):
        """Put every matrix back on the sphere: unit norm along its n_embd axis.

        Called by train.py after every optimizer step (and once before the first), and at construction.
        This is a retraction: Adam steps on the raw weights and the step is projected back, as NVIDIA's
        normalize_matrices() in its train.py. The n_embd axis is dim 1 of the (out, n_embd) matrices (wte,
        lm_head, c_attn, c_fc) and dim 0 of the (n_embd, in) output projections (the two c_proj).
        One norm per matrix and one batched division over all of them, in fp32; the scale vectors stay as they are.
        (c_proj's column norms as a root of a sum of squares: Tensor.norm along dim 0 is slow on CPU.)
        """
        matrices = [(name, p) for name, p in self.named_parameters() if p.dim() == 2]
        weights = [p.float() for _, p in matrices]  # the parameters themselves when they are fp32
        norms = [w.square().sum(dim=0, keepdim=True).sqrt_() if name.endswith("c_proj.weight")
                 else w.norm(dim=1, keepdim=True) for (name, _), w in zip(matrices, weights)]
        torch._foreach_div_(weights, norms)
        for (_, p), w in zip(matrices, weights):
            if w is not p:  # parameters stored in a lower precision: copy the fp32 result back
                p.copy_(w)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens, feeding the last block_size tokens back in."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits.float(), dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
