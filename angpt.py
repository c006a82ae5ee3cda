"""
anGPT: the approximately normalized transformer, whose residual stream is kept near the unit sphere by constant
factors instead of a norm.

Franke, Spiegelhalter, Nezhurina, Jitsev, Hutter, Hefenbrock, "Learning in Compact Spaces with Approximately
Normalized Transformer", arXiv 2505.22014v2 (NeurIPS 2025); official code github.com/automl/anGPT. The model is
the anGPT column of the paper's Table 1, and this file is ngpt.py with its changes, so that `diff ngpt.py angpt.py`
shows them:
  - after the LERP step h is multiplied by the constant nu(alpha) = 1/sqrt(alpha^2 + (1 - alpha)^2) (App. E)
    instead of being normalized: the residual stream is the one representation not normalized exactly,
  - q and k are normalized per head without learned scales; the attention logits are q k^T g, with the learned gain
    g of GPT+'s QK-norm, instead of s_qk and sqrt(d_k),
  - the MLP's u, z are W_uz h nu_uz, with the constant nu_uz = sqrt(d_model/d_ff), instead of s_u and s_v sqrt(d),
  - every row of every matrix along its input axis lies in the unit ball (||w|| <= 1, sec. 4.2), unit at init,
    instead of on the sphere along the d_model axis,
  - the recipe of Table F.2: Adam, eps 1e-9, no weight decay, no warmup, cosine decay to 0.01 x the peak LR.
That makes four exact norms per block, of q, k and the two block outputs h_a and h_m (sec. 4.3: "removing
normalization completely leads to unstable training"), and none on h, where nGPT computes seven.

Where Table 1's symbols live. The learned vectors are Scales, stored at s_scale and multiplied by s_init/s_scale in
the forward, so that Adam's steps on them are s_init/s_scale times larger in effect (sec. 4.3, as nGPT):
  symbol     parameter or constant                 shape                    s_init              s_scale
  alpha_a    transformer.h.{l}.alpha_attn.weight   (n_embd,)                0.05, then abs()    0.01
  alpha_m    transformer.h.{l}.alpha_mlp.weight    (n_embd,)                0.05, then abs()    0.01
  s_z        s_z.weight                            (vocab_size,)            1                   0.01
  g          transformer.h.{l}.attn.g.weight       (1,)                     sqrt(d_head)        (not a Scale)
  nu_uz      MLP.nu_uz                             sqrt(n_embd / (4 n_embd)) = 1/2
  nu(alpha)  Block.step()                          from the current alpha, every forward
nu_qkv = sqrt(d_model/d_head), nu_p = 1, nu_acf = 3.74 and nu_d = sqrt(d_ff/d_model) multiply vectors that are
normalized next, which a positive constant changes neither in value nor in gradient: each is named at its line.

Choices the paper leaves open, each an option, the default measured on the CPU preset (results/README.md,
"Open choices"):
  - g: one gain per layer, starting at sqrt(d_head), where nGPT's effective gain starts.
  - s_scale 0.01 (sec. 5; Table F.2 says 0.001, nGPT uses 1/sqrt(n_embd)); s_z_init 1; alpha_init 0.05 (sec. 5.6).
  - beta2 0.95 (Table F.2; App. G uses 0.99 below 100M parameters), and the peak LR 2e-3.
  - the embedding and the output head are in the ball too, row by row (App. A: "our work bound all parameter
    matrices to one"; their axis is not stated): each row is one token's d_model vector.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# The paper recipe, read by train.py (any of it can be overridden on the command line).
# anGPT paper, Table F.2 (nGPT/anGPT column): Adam, no weight decay (the ball bounds the weights), no warmup (the
# weights start normalized, sec. 4.2), cosine annealing to 0.01 x peak, gradient clipping at 1.0.
RECIPE = dict(
    learning_rate=2e-3,  # peak LR, tuned on the CPU preset (results/README.md, "Open choices")
    min_lr_ratio=0.01,   # cosine decays to learning_rate * min_lr_ratio ("Lr Decay Factor 0.01")
    warmup=0,
    weight_decay=0.0,    # the ball bounds the weights; decay would only pull them inside it
    beta1=0.9,
    beta2=0.95,
    eps=1e-9,
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
    in effect (its learning rate is effectively scaled up).
    """

    def __init__(self, dim, s_init, s_scale):
        super().__init__()
        self.s_init, self.s_scale = s_init, s_scale
        self.weight = nn.Parameter(torch.full((dim,), float(s_scale)))

    def forward(self):
        return self.weight * (self.s_init / self.s_scale)


class QKGain(nn.Module):
    """The learned gain g of QK-norm (Henry et al. 2020): the attention logits are g q.k for unit q and k. One scalar
    per layer, starting at sqrt(d_head), the gain that the usual 1/sqrt(d_head) softmax scale gives RMS-normalized q
    and k (results/README.md, "Open choices", measures a gain per head and Henry et al.'s start)."""

    def __init__(self, config):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), math.sqrt(config.n_embd // config.n_head)))

    def forward(self):
        return self.weight.view(1, 1, 1)  # broadcast over (B, nh, T, hs)


def rope_tables(seq_len, rope_dim, device):
    """The cos and sin tables, each (seq_len, rope_dim/2) in fp32, that apply_rope needs for the first rope_dim
    dimensions of a head (all of them, or rope_fraction of them: the frequencies span the rotated dimensions, as in
    GPT-NeoX)."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freq = 10000.0 ** (-torch.arange(0, rope_dim, 2, device=device, dtype=torch.float32) / rope_dim)
    angle = torch.outer(pos, freq)  # (T, rope_dim/2): position p times frequency w_j
    return angle.cos(), angle.sin()


def apply_rope(x, tables):
    """RoPE on q or k, x: (B, nh, T, hs), on the first rope_dim dimensions of each head, as many as the tables
    cover; the rest pass through unchanged."""
    a, b = tables  # each (T, rope_dim/2)
    x, x_pass = x[..., : 2 * a.size(-1)], x[..., 2 * a.size(-1) :]
    # rotate the pair (x[j], x[j + rope_dim/2]) by the angle p * w_j; norms and relative offsets preserved
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * a - x2 * b, x2 * a + x1 * b, x_pass), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        # query, key and value projections for all heads in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # g: the learned gain of the attention logits, the same as GPT+'s (Table 1)
        self.g = QKGain(config)

    def forward(self, x, tables):
        B, T, C = x.size()
        # q, k, v <- W_qkv h nu_qkv; nu_qkv = sqrt(d_model/d_head) cancels in norm(q), norm(k) and, for v, norm(h_a)
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rope(q, tables), apply_rope(k, tables)
        # k <- norm(k), q <- norm(q), per head, after the positional transform; A <- softmax(q k^T g), so the logits
        # are g times a cosine. g is applied to q
        q, k = self.g() * norm(q), norm(k)
        y = F.scaled_dot_product_attention(q.type_as(v), k.type_as(v), v, is_causal=True, scale=1.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.c_proj(y)  # h_a <- W_p (A v) nu_p; nu_p = 1 (App. E), and any constant cancels in norm(h_a)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        # SwiGLU: u and the gate z come from one matrix of 2 * 4 * n_embd rows (NVIDIA's c_fc)
        self.c_fc = nn.Linear(config.n_embd, 2 * 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        # nu_uz = sqrt(d_model/d_ff) (App. E): it sets the scale of the gate's input z, which enters SiLU. Of the
        # constant factors it is the one not followed by a norm, so Table L.1's "const. norm factor" ablations act here
        self.nu_uz = math.sqrt(config.n_embd / (4 * config.n_embd)) * config.const_factor_mult

    def forward(self, x):
        # u, z <- W_uz h nu_uz, computed as W_uz (h nu_uz): the same numbers, with x 8 times narrower than u, z
        u, z = self.c_fc(x * self.nu_uz).chunk(2, dim=-1)
        # h_m <- u SiLU(z) nu_acf, h_m <- W_d h_m nu_d: nu_acf = 3.74 and nu_d = sqrt(d_ff/d_model) cancel in norm(h_m)
        return self.c_proj(u * F.silu(z))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        self.config = config
        if config.lerp:  # the interpolation weights alpha_a, alpha_m: per-channel step sizes toward the block outputs
            self.alpha_attn = Scale(config.n_embd, config.alpha_init, config.s_scale)
            self.alpha_mlp = Scale(config.n_embd, config.alpha_init, config.s_scale)
        else:
            self.alpha_attn = self.alpha_mlp = None

    def forward(self, h, tables):
        # Table 1: h_a <- norm(h_a), h <- (h + alpha_a (h_a - h)) nu(alpha_a), then the same with h_m and alpha_m
        h = self.step(h, norm(self.attn(h, tables)), self.alpha_attn)
        h = self.step(h, norm(self.mlp(h)), self.alpha_mlp)
        return h

    def step(self, h, h_block, alpha):
        """h <- (h + alpha (h_block - h)) nu(alpha): a step of size alpha from h toward h_block, rescaled by a constant.

        For independent unit h and h_block, E||h + alpha (h_block - h)||^2 = (1 - alpha)^2 + alpha^2 (sec. 4.2), so
        nu(alpha) = 1/sqrt(alpha^2 + (1 - alpha)^2) (App. E) brings it back to about unit norm: elementwise for the
        per-channel alpha, and recomputed from the current alpha every forward.
        """
        c = self.config
        if not c.lerp:  # Table L.1, "no LERP": the plain residual sum, or over sqrt(2), as E||h + h_block||^2 = 2
            return (h + h_block) * (1 / math.sqrt(2) if c.no_lerp_nu else 1.0)
        alpha = alpha().abs()  # abs() keeps alpha positive, as nGPT's
        # Table L.1: "no residual norm factor" is the plain interpolation, "all norm factors x0.5, x2.0" scale nu
        nu = (torch.rsqrt(alpha ** 2 + (1 - alpha) ** 2) if c.residual_factor else 1.0) * c.residual_factor_mult
        # (h + alpha (h_block - h)) nu = h (1 - alpha) nu + h_block alpha nu: one multiply and one fused multiply-add
        return torch.addcmul(h * ((1 - alpha) * nu), h_block, alpha * nu)


@dataclass
class Config:
    block_size: int = 1024     # context length the model is trained on
    vocab_size: int = 50304    # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    rope_fraction: float = 1.0  # the fraction of each head's dimensions that rope turns (anGPT paper, Table F.2: 0.5)
    alpha_init: float = 0.05   # initial alpha_a, alpha_m (sec. 5.6)
    s_z_init: float = 1.0      # initial logit scale s_z
    s_scale: float = 0.01      # the s_scale of alpha and s_z (sec. 5; nGPT's is 1/sqrt(n_embd))
    # the ablations of Table L.1, each off the full model by one switch (experiments/ablations.py runs them)
    lerp: bool = True          # false: "no LERP", each residual step is the plain sum h + h_block
    no_lerp_nu: bool = False   # with lerp false: (h + h_block) / sqrt(2), the sum's own norm factor
    residual_factor: bool = True  # false: "no residual norm factor", the step is the plain interpolation
    const_factor_mult: float = 1.0     # "const. norm factor x0.5, x2.0": nu_uz times this; 2 is "no const. norm
                                       # factors" too, as nu_uz = 1/2 is the one constant not followed by a norm
    residual_factor_mult: float = 1.0  # with const_factor_mult, "all norm factors x0.5, x2.0": nu(alpha) times this


class Model(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        assert 0 < config.rope_fraction <= 1, f"rope_fraction must be above 0 and at most 1, not {config.rope_fraction}"
        self.rope_dim = 2 * max(1, round(config.n_embd // config.n_head * config.rope_fraction / 2))  # whole pairs
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # not tied to wte
        # s_z: h is near unit norm and the rows of lm_head have norm <= 1, so W_h h lies in about [-1, 1]; s_z restores
        # the logits' temperature, per vocabulary entry (Table 1)
        self.s_z = Scale(config.vocab_size, config.s_z_init, config.s_scale)
        # every matrix starts with unit rows along its input axis, random directions on the sphere: the boundary of
        # the ball that after_step() keeps them in. Starting normalized is why no warmup is needed (sec. 4.2)
        self.apply(self._init_weights)
        # positional tables for the training length; buffers follow .to(device) but stay out of checkpoints
        rope_a, rope_b = rope_tables(config.block_size, self.rope_dim, "cpu")
        self.register_buffer("rope_a", rope_a, persistent=False)
        self.register_buffer("rope_b", rope_b, persistent=False)

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=1.0)
            module.weight.div_(module.weight.norm(dim=1, keepdim=True))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def rope_tables(self, seq_len):
        if seq_len <= self.rope_a.size(0):
            return self.rope_a[:seq_len], self.rope_b[:seq_len]
        # longer than the training context (length extrapolation): compute the tables afresh
        return rope_tables(seq_len, self.rope_dim, self.rope_a.device)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        tables = self.rope_tables(T)
        h = self.transformer.wte(idx)  # (B, T, C), rows of norm <= 1 (unit at init)
        for block in self.transformer.h:
            h = block(h, tables)
        # no final norm: h is near unit norm already
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

        anGPT's recipe has weight_decay 0, so both groups are plain Adam; the split keeps the interface.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
            dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0),
        ]

    @torch.no_grad()
    def after_step(self):
        """Project every matrix into the unit ball, row by row: w <- w / max(1, ||w||) along its input axis.

        Called by train.py after every optimizer step (and once before the first). Rows inside the ball are left
        exactly as they are (divided by 1.0); rows that Adam pushed outside are pulled back to the sphere. The input
        axis is dim 1 of every matrix: the (out, in) Linear weights and the (V, n_embd) wte. For the output
        projections (the two c_proj) that differs from ngpt.py, which normalizes their columns.
        One norm per matrix and one batched division over all of them, in fp32; the scale vectors stay as they are.
        """
        matrices = [p for p in self.parameters() if p.dim() == 2]
        weights = [p.float() for p in matrices]  # the parameters themselves when they are fp32
        torch._foreach_div_(weights, [w.norm(dim=1, keepdim=True).clamp_min_(1.0) for w in weights])
        for p, w in zip(matrices, weights):
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
