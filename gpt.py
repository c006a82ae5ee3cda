"""
GPT: the baseline that both normalized-transformer papers compare against.

This is the "GPT" of the nGPT paper (Loshchilov et al., arXiv 2410.01131, and NVIDIA's reference code
github.com/NVIDIA/ngpt with use_nGPT=0) and the "GPT+" of the anGPT paper (Franke et al., arXiv 2505.22014):
a decoder-only transformer with
  - pre-norm blocks: h <- h + Attn(RMSNorm(h)), h <- h + MLP(RMSNorm(h)), and a final RMSNorm,
  - rotary position embeddings inside attention (no learned position table),
  - a SwiGLU MLP with 4*n_embd units in each of its two branches (as in NVIDIA's code, not the 8/3 variant),
  - no biases, and a token embedding that is not tied to the output head,
  - optionally QK-norm (qk_norm="true"): the anGPT paper's GPT+ (its Table 1), q and k normalized per head and the
    attention logits q k^T g with a learned gain g (Henry et al. 2020's QKNorm, the paper's ref. [18]);
    qk_norm="rms" is the other common form, RMSNorm on q and k with per-channel gains and the usual 1/sqrt(d_head).

It follows karpathy/nanoGPT's model.py in layout, and ngpt.py and angpt.py follow this file, so that
`diff gpt.py ngpt.py` shows what nGPT changes. Every model file has the interface of README.md, "The model
interface".

Positional encoding (rope):
  "standard"  - true RoPE (Su et al.), base 10000, rotate-half convention. The nGPT paper's choice.
  "reference" - the element-wise transform that NVIDIA's nGPT code calls rotary (NVIDIA/ngpt issue #10):
                not a rotation and not relative, but it is what the code that measured nGPT's speedups ran,
                for both GPT and nGPT. Use it to reproduce that baseline exactly.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# The paper recipe, read by train.py (any of it can be overridden on the command line).
# nGPT paper, Table 3 (GPT column) and NVIDIA's train.py: AdamW, weight decay 0.1 on matrices only,
# betas (0.9, 0.95), linear warmup, cosine annealing to a final LR of 0, gradient clipping at 1.0.
# The paper warms up for 2000 of >=50k iterations; 100 is nanoGPT's warmup for the Shakespeare presets.
RECIPE = dict(
    learning_rate=2e-3,  # peak LR, tuned on the CPU preset (results/README.md, "Learning rates")
    min_lr_ratio=0.0,    # cosine decays to learning_rate * min_lr_ratio
    warmup=100,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,            # AdamW's default, as NVIDIA's code
    grad_clip=1.0,
)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain, computed in fp32 (as in NVIDIA's baseline, eps 1e-6)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps).type_as(x)


def norm(x):
    """x / ||x|| along the last dim, in fp32 and without an epsilon, by PyTorch's fused weight-norm kernel (the op
    behind torch.nn.utils.parametrizations.weight_norm: g v / ||v|| for every row v, here with g = 1). One pass
    forward and one backward, where the written-out formula is about ten small ops."""
    x = x.float()
    rows = x.reshape(-1, x.size(-1))
    return torch._weight_norm(rows, rows.new_ones(rows.size(0), 1), 0).view(x.shape)


class QKGain(nn.Module):
    """The learned gain g of QK-norm (Henry et al. 2020): the attention logits are g q.k for unit q and k. One scalar
    per layer, starting at sqrt(d_head), the gain that the usual 1/sqrt(d_head) softmax scale gives RMS-normalized q
    and k (results/README.md, "Open choices", measures a gain per head and Henry et al.'s start)."""

    def __init__(self, config):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), math.sqrt(config.n_embd // config.n_head)))

    def forward(self):
        return self.weight.view(1, 1, 1)  # broadcast over (B, nh, T, hs)


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
        # query, key and value projections for all heads in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        assert config.qk_norm in ("false", "true", "rms"), (
            f"qk_norm must be false, true or rms, not {config.qk_norm!r}")
        self.qk_norm = config.qk_norm
        if config.qk_norm == "true":
            self.g = QKGain(config)
        if config.qk_norm == "rms":
            self.q_norm = RMSNorm(self.head_dim)
            self.k_norm = RMSNorm(self.head_dim)

    def forward(self, x, tables):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm == "rms":
            # RMSNorm per head with per-channel gains: with the usual 1/sqrt(hs) scale the logits become
            # sqrt(hs) * cos(q, k) times the gains
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(self.rope, q, tables), apply_rope(self.rope, k, tables)
        scale = 1 / math.sqrt(self.head_dim)  # the usual softmax scale 1/sqrt(hs)
        if self.qk_norm == "true":
            # GPT+ (anGPT paper, Table 1): k <- norm(k), q <- norm(q), A <- softmax(q k^T g); g is applied to q
            q, k = (self.g() * norm(q)).type_as(v), norm(k).type_as(v)
            scale = 1.0
        # flash attention on GPU
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        # SwiGLU: u and the gate v come from one matrix of 2 * 4 * n_embd rows (NVIDIA's c_fc)
        self.c_fc = nn.Linear(config.n_embd, 2 * 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        u, v = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(u * F.silu(v))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, h, tables):
        h = h + self.attn(self.ln_1(h), tables)
        h = h + self.mlp(self.ln_2(h))
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
    qk_norm: str = "false"     # "true": the anGPT paper's GPT+, L2 norm of q and k and a learned gain g; "rms": RMSNorm


class Model(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        assert config.rope in ("standard", "reference"), f"rope must be standard or reference, not {config.rope!r}"
        assert 0 < config.rope_fraction <= 1, f"rope_fraction must be above 0 and at most 1, not {config.rope_fraction}"
        self.rope_dim = 2 * max(1, round(config.n_embd // config.n_head * config.rope_fraction / 2))  # whole pairs
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # not tied to wte
        # init all weights N(0, 0.02), then the residual projections N(0, 0.02/sqrt(2 * n_layer)) as in GPT-2,
        # so the residual stream's variance does not grow with depth at init
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # positional tables for the training length; buffers follow .to(device) but stay out of checkpoints
        rope_a, rope_b = rope_tables(config.rope, config.block_size, self.rope_dim, "cpu")
        self.register_buffer("rope_a", rope_a, persistent=False)
        self.register_buffer("rope_b", rope_b, persistent=False)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

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
        h = self.transformer.wte(idx)  # (B, T, C)
        for block in self.transformer.h:
            h = block(h, tables)
        h = self.transformer.ln_f(h)
        if targets is None:
            # inference: only the last position's logits are needed
            return self.lm_head(h[:, [-1], :]), None
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def optimizer_groups(self, weight_decay):
        """AdamW parameter groups: weight decay on matrices (and embeddings), none on the RMSNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
            dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0),
        ]

    def after_step(self):
        """Called by train.py after every optimizer step. GPT has no invariant to restore."""

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
