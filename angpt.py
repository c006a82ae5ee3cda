"""
anGPT: the approximately normalized transformer, whose representations are kept near the unit sphere by
constant factors instead of exact normalization.

Franke, Spiegelhalter, Nezhurina, Jitsev, Hutter, Hefenbrock, "Learning in Compact Spaces with Approximately
Normalized Transformer(s)", arXiv 2505.22014 (NeurIPS 2025); official code github.com/automl/anGPT (not read).
The paper's full text could not be read either: the factors and the recipe come from secondary summaries,
collected with a certainty tag for each fact in ../shared/specs/angpt.md ("spec" below; [S] read in a summary,
[I] inferred, [V] checked numerically). This file is ngpt.py with anGPT's changes, so that `diff ngpt.py angpt.py`
shows the paper: every exact normalization of a representation is replaced by a constant factor nu ~ 1/E||x||,
derived for unit inputs and unit weight rows (in high dimension the norm of a random vector concentrates, so the
constant is nearly exact), and the weights live in the unit ball instead of on the sphere:
  - no norm layers; every row of every matrix along its input axis has norm <= 1 (after_step()),
  - the hidden state h moves a learned step alpha toward the block output and is rescaled by the constant
    nu(alpha) = 1/sqrt(alpha^2 + (1 - alpha)^2) (spec 3.4), not normalized,
  - q, k, v, the attention output, the SwiGLU's u, z and its output are each multiplied by a fixed factor,
  - the logits are scaled by s_z; no weight decay and no warmup (RECIPE).

Where the paper's factors live (spec 3.6: E||W x||^2 = r/d for a unit x in R^d and W in R^{r x d} with unit rows,
so nu = sqrt(d/r)):
  symbol   value                          where                       brings to about unit norm
  nu_qkv   sqrt(n_embd/d_head) = sqrt(nh)  CausalSelfAttention.nu_qkv   q, k, v of each head (spec 3.3)
  nu_att   sqrt(t), t = 1..T (option)     CausalSelfAttention.forward  each head's output o_t (spec 3.3, [I])
  nu_p     sqrt(d_head/n_embd)            CausalSelfAttention.nu_p     h_A = W_o concat(o) (spec 3.3)
  nu_uz    sqrt(n_embd/d_ff) = 1/2        MLP.nu_uz                    u and z in R^{4 n_embd} (spec 3.5)
  nu_acf   1/sqrt(E[silu(N(0,1/4))^2])    NU_ACF, computed at import   the gate g (spec 3.5; the paper: ~3.74)
  nu_d     sqrt(d_ff/n_embd) = 2          MLP.nu_d                     h_M = W_d g (spec 3.5)
  nu(a)    1/sqrt(a^2 + (1-a)^2)          step_near_sphere()           h after each residual step (spec 3.4)
The factors are constants, and most maps between them are linear, so the forward applies each where it costs least
(the same function; tests/test_angpt.py checks it against the factor-by-factor reading): nu_qkv^2 goes into the
softmax scale, nu_qkv of v, nu_att and nu_p into one multiply of the attention output; the gate's gain
nu_uz sqrt(n_embd) multiplies the MLP's input (which scales u too), and the factors on the MLP's linear path (nu_uz
of u, nu_acf, nu_d, divided by that gain) make one multiply of h_M.
The learned vectors are Scales as in ngpt.py (stored at s_scale, multiplied by s_init/s_scale in the forward):
  alpha_A  transformer.h.{l}.alpha_attn.weight  (n_embd,)      alpha_init, then abs()  s_scale 1/sqrt(n_embd)
  alpha_M  transformer.h.{l}.alpha_mlp.weight   (n_embd,)      alpha_init, then abs()  s_scale 1/sqrt(n_embd)
  s_z      s_z.weight                           (vocab_size,)  1                       s_scale 1/sqrt(n_embd)
There is no s_qk and no s_u, s_v: the summaries name alpha_A, alpha_M and s_z as anGPT's only learned scales (spec 5).

What the forward computes with the default options: one embedding lookup, then per block
  matmul, RoPE, SDPA (scale sqrt(d_head) nu_qkv^2), x nu_qkv nu_p sqrt(t), matmul, lerp with nu(alpha)   (attention)
  x nu_uz sqrt(n_embd), matmul, silu, x u, matmul, x nu_acf nu_d / sqrt(n_embd), lerp with nu(alpha)     (MLP)
and one matmul with s_z on the rows of lm_head for the logits: no vector norm anywhere (tests/test_angpt.py counts
them). nGPT computes seven per block. The only norms left are in after_step(), one per matrix per optimizer step.

Choices the sources leave open (spec section 10), each an option where it changes the math:
  - attn_out_norm: the attention output is a weighted mean of values; its norm depends on how spread the
    attention is. The paper derives its factor "assuming dense attention" (spec 3.3); our reading is the uniform
    causal average, nu_att = sqrt(t) at query position t ("sqrt_pos"). "exact" normalizes each head's output
    (F.normalize), "none" leaves it as it is. Measured below: "sqrt_pos".
  - qk_norm_exact: F.normalize on q and k per head after RoPE. The abstract says all representations are
    normalized by scalar multiplications, so the default is off (spec 3.3); measured below, and kept off.
  - softmax scale sqrt(d_head) on unit-ish q, k, as nGPT; no learned s_qk ([I], spec 3.3).
  - the gate input is multiplied by sqrt(n_embd) before the SiLU, as nGPT does; it is what makes nu_acf a constant
    that matches the paper's 3.74 ([I], spec 3.5). We compute nu_acf = 3.720 from its definition (the paper's
    Monte Carlo estimate, 3.74, is 0.5% higher; the paper finds errors up to 2% in such factors harmless).
  - alpha_A, alpha_M are per-channel vectors, as nGPT's ([I]); alpha_init: the summaries report "s_a,init = 0.01",
    nGPT uses 0.05 (spec 5). Measured below: 0.05.
  - weight rows are constrained along the INPUT axis of every matrix (dim 1 of (out, in) and of the (V, n_embd)
    embeddings), the axis the r/d rule assumes. For the two output projections (c_proj) this is NOT nGPT's axis:
    ngpt.py normalizes their columns (the n_embd axis). Projected after each step: w <- w / max(1, ||w||).
  - the row constraint covers the token embedding and the lm_head too ("all weight matrices", spec 4).
  - Adam with betas (0.9, 0.95) and gradient clipping 1.0 are our choices (spec 6, [G]); the peak LR is tuned below.

Measurements (CPU preset: tiny Shakespeare characters, 4 layers, 4 heads, width 128, context 64, batch 12, 2000
steps, seed 1337, one run each unless a second seed is given; final val loss, and the mean ||h|| after each block
on 256 validation sequences of the final checkpoint):

  alpha_init  attn_out_norm  qk_norm_exact  peak LR  val loss                mean ||h|| after blocks 1-4
  0.01        sqrt_pos       off            1e-3     2.0528                  1.54 2.60 5.21 9.62
  0.01        sqrt_pos       off            2e-3     1.9606                  1.46 2.29 3.79 6.85
  0.01        sqrt_pos       off            4e-3     1.8464                  1.29 1.76 2.81 4.45
  0.01        sqrt_pos       off            8e-3     1.8487                  1.13 1.72 2.31 3.45
  0.01        sqrt_pos       off            1.6e-2   1.8919                  2.07 2.41 2.55 3.41
  0.01        exact          off            4e-3     1.8905                  1.07 1.16 1.47 3.75
  0.01        none           off            4e-3     1.8963                  1.27 1.79 2.48 4.44
  0.01        sqrt_pos       on             4e-3     1.7487                  1.58 2.30 3.10 5.07
  0.05        sqrt_pos       off            2e-3     1.7652                  1.31 1.99 3.35 8.49
  0.05        sqrt_pos       off            4e-3     1.7251 (seed 2: 1.7309) 1.23 1.65 2.44 5.94   <- default
  0.05        sqrt_pos       off            8e-3     1.7851                  1.79 2.00 2.46 4.80
  0.05        exact          off            4e-3     1.7794                  1.18 1.31 1.71 5.20
  0.05        none           off            4e-3     1.7558                  1.25 1.54 2.06 5.64
  0.05        sqrt_pos       on             4e-3     1.6982 (seed 2: 1.6707) 1.26 1.67 2.46 6.29
For comparison, same preset: GPT 1.6999, GPT+QK-norm 1.6727, nGPT 1.6417 (their own tuned LRs).

What we chose and why:
  - alpha_init 0.05 (nGPT's): 0.12 lower loss than 0.01 at the same LR; 0.01 learns too slowly in 2000 steps.
  - attn_out_norm "sqrt_pos": the best of the three at both alpha_init values (by 0.03 to 0.05).
  - peak LR 4e-3: best at both alpha_init values (8e-3 is within 0.003 at alpha 0.01 and 0.06 worse at 0.05).
  - qk_norm_exact off, although on is 0.03 to 0.06 better on both seeds: it computes two vector norms per block,
    which is what anGPT removes (the paper drops every norm layer of GPT+, QK-norm included, spec 3.1), and it
    makes anGPT a hybrid. `--qk_norm_exact true` is the better model on this preset; the default is the paper's.
A finding the sources do not mention: the factors hold at initialization (tests/test_angpt.py: every mean norm
within [0.85, 1.15] at width 256), but they are derived for weights independent of their inputs, and trained rows
align with the inputs they see. So the norms drift upward with training, and more in later blocks: after the
preset's 2000 steps ||h|| is 1.2 after block 1 and 6 after block 4, and q, k, v reach norms of 2 to 5; most of it
happens in the first few hundred steps. The row constraint bounds the drift (||W x|| <= sqrt(rows) ||x||) but does
not remove it; exact normalization (nGPT, or attn_out_norm "exact") keeps the early blocks closer to 1.
A second one: "sqrt_pos" does not extrapolate. Trained attention is far from uniform, so sqrt(t) overshoots more the
later the position, and past the training length it reaches values training never saw. The three checkpoints of
results/cpu (context 64) have a mean val loss of 1.72 at 64 tokens, 1.91 at 128, 3.7 at 256 and above 28 at 512
(every seed), where nGPT's goes 1.64, 1.66, 1.71, 1.82 (`python compare.py --extrapolate --runs results/cpu/runs`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# The paper recipe, read by train.py (any of it can be overridden on the command line).
# anGPT paper via the summaries (spec section 6): Adam without weight decay (the ball bounds the weights), no
# warmup (the weights start normalized), cosine annealing. Betas and clipping are not reported; these are nGPT's.
RECIPE = dict(
    learning_rate=4e-3,  # peak LR, tuned on the CPU preset (docstring above)
    min_lr_ratio=0.0,    # cosine decays to learning_rate * min_lr_ratio
    warmup_iters=0,
    weight_decay=0.0,    # the norm constraint replaces weight decay
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
)


def silu_gain(std, points=200_001):
    """nu_acf = 1/sqrt(E[silu(X)^2]) for X ~ N(0, std^2): the factor that brings silu's output back to unit variance.

    Trapezoid rule on [-12 std, 12 std] in float64 (the tails beyond add less than 1e-30), computed once at import.
    """
    x = torch.linspace(-12 * std, 12 * std, points, dtype=torch.float64)
    density = torch.exp(-0.5 * (x / std) ** 2) / (std * math.sqrt(2 * math.pi))
    return torch.trapezoid(F.silu(x) ** 2 * density, x).item() ** -0.5


# spec 3.5: each gate input sqrt(n_embd) * z_i, with z = nu_uz W_z h and unit h and rows, is about N(0, 1/4)
NU_ACF = silu_gain(0.5)  # 3.7203; the paper reports ~3.74 from a Monte Carlo estimate


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


def rope_tables(rope, seq_len, head_dim, device):
    """The two (seq_len, head_dim/2) tables that apply_rope needs, in fp32."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freq = 10000.0 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angle = torch.outer(pos, freq)  # (T, hs/2): position p times frequency w_j
    if rope == "standard":
        return angle.cos(), angle.sin()
    # NVIDIA's table interleaves sin and cos, E[p, 2j] = sin(p w_j), E[p, 2j+1] = cos(p w_j), then splits
    # it in halves along the last dim; both halves still mix frequencies (spec ngpt.md section 1.4).
    table = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)  # (T, hs)
    return table[:, : head_dim // 2], table[:, head_dim // 2 :]


def apply_rope(rope, x, tables):
    """Position-dependent transform of q or k, x: (B, nh, T, hs)."""
    a, b = tables  # each (T, hs/2)
    if rope == "standard":
        # rotate the pair (x[j], x[j + hs/2]) by the angle p * w_j; norms and relative offsets preserved
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * a - x2 * b, x2 * a + x1 * b), dim=-1).type_as(x)
    # reference: out[2i] = -x[2i+1] * b[p, i], out[2i+1] = x[2i] * a[p, i]; no cos/sin sum, so it is
    # neither norm-preserving nor relative, and zeroes every even pair at p = 0 (NVIDIA/ngpt issue #10)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x_odd * b, x_even * a), dim=-1).flatten(-2).type_as(x)


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
        # spec 3.3: each head's q, k, v is d_head unit rows applied to a unit h, so E||q||^2 = d_head/n_embd
        self.nu_qkv = math.sqrt(config.n_embd / self.head_dim)
        # spec 3.3: the concatenated head outputs have ||y||^2 ~ n_head; W_o has n_embd unit rows of length n_embd
        self.nu_p = math.sqrt(self.head_dim / config.n_embd)
        self.qk_norm_exact = config.qk_norm_exact
        self.attn_out_norm = config.attn_out_norm
        # for train.py's attention metrics only, inert in training: a multiplier on the attention logits (the
        # temperature-saturation probe of Merrill et al. 2021) and, when set to a list, a record of the logits
        self.logit_mult = 1.0
        self.record_logits = None

    def forward(self, x, tables):
        B, T, C = x.size()
        # q, k and v are used here without their factor nu_qkv: every factor is a constant, so each one is applied
        # where it costs least (the same numbers, fewer passes over the activations)
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rope(self.rope, q, tables), apply_rope(self.rope, k, tables)
        # nu_qkv q and nu_qkv k are about unit vectors, so their dot product is about a cosine, of variance 1/hs for
        # random directions: the softmax scale is +sqrt(hs), as nGPT's, which brings the logits back to variance 1
        # (spec 3.3, [I]). (nu_qkv q).(nu_qkv k) = nu_qkv^2 q.k, so nu_qkv^2 joins the softmax scale
        scale = math.sqrt(self.head_dim) * self.nu_qkv ** 2
        if self.qk_norm_exact:
            # option: exact unit q and k per head, as nGPT (without its s_qk); off in anGPT by default
            q, k = F.normalize(q.float(), dim=-1).type_as(v), F.normalize(k.float(), dim=-1).type_as(v)
            scale = math.sqrt(self.head_dim)
        scale = scale * self.logit_mult
        if self.record_logits is not None:
            self.record_logits.append(scale * (q.float() @ k.float().transpose(-2, -1)))  # (B, nh, T, T), unmasked
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)  # (B, nh, T, hs)
        # y averages the values without their nu_qkv. nu_qkv, the attention-output factor and nu_p (h_A = nu_p W_o y
        # is linear in y) are constants per query position: one multiply of y applies all three
        if self.attn_out_norm == "sqrt_pos":
            # nu_att(t) = sqrt(t): the mean of t independent unit values has norm 1/sqrt(t) (dense, uniform
            # attention; spec 3.3). A constant per query position, not per token
            nu_att = torch.arange(1, T + 1, device=y.device, dtype=torch.float32).sqrt().view(T, 1)
            y = y * (self.nu_qkv * self.nu_p * nu_att)
        elif self.attn_out_norm == "exact":
            y = F.normalize(y.float(), dim=-1).type_as(v) * self.nu_p  # nu_qkv cancels in the normalization
        else:
            y = y * (self.nu_qkv * self.nu_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.c_proj(y)  # h_A = nu_p W_o concat(nu_att o_t), its factors applied to y above


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        # SwiGLU: u and the gate z come from one matrix of 2 * 4 * n_embd rows (NVIDIA's c_fc)
        self.c_fc = nn.Linear(config.n_embd, 2 * 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        d_ff = 4 * config.n_embd
        self.nu_uz = math.sqrt(config.n_embd / d_ff)  # spec 3.5: u, z in R^{d_ff} of about unit norm
        self.nu_acf = NU_ACF                           # spec 3.5: silu's output back to unit variance
        self.nu_d = math.sqrt(d_ff / config.n_embd)   # spec 3.5: W_d maps R^{d_ff} to R^{n_embd}
        # each entry of nu_uz z is about N(0, 1/(4 n_embd)), where SiLU is nearly linear; sqrt(n_embd) brings it to
        # N(0, 1/4), where SiLU bends (nGPT's trick; [I] spec 3.5)
        self.gate_gain = self.nu_uz * math.sqrt(config.n_embd)
        # h_M = nu_d W_d (nu_acf silu(.) * nu_uz u) is linear in u: its three constants become one, applied to h_M,
        # the narrowest tensor (n_embd wide, not 4 n_embd). The gate's gain is applied to the input x instead of z (the
        # same for z, 4 times fewer numbers), which scales u too: out_gain takes that back
        self.out_gain = self.nu_uz * self.nu_acf * self.nu_d / self.gate_gain

    def forward(self, x):
        u, z = self.c_fc(x * self.gate_gain).chunk(2, dim=-1)  # z with its gain, u with the gain out_gain removes
        g = F.silu(z) * u
        return self.c_proj(g) * self.out_gain  # h_M


def step_near_sphere(h, h_block, alpha):
    """h <- nu(alpha) (h + alpha (h_block - h)): a step of size alpha from h toward h_block, rescaled by a constant.

    For independent unit h and h_block, E||(1 - alpha) h + alpha h_block||^2 = (1 - alpha)^2 + alpha^2, so
    nu(alpha) = 1/sqrt(alpha^2 + (1 - alpha)^2) brings the result back to about unit norm (spec 3.4). Elementwise for
    the per-channel alpha, recomputed from the current alpha every forward, in fp32. The summaries call this the
    factor that matters most: without it training is unstable.
    """
    alpha = alpha.float()
    nu = torch.rsqrt(alpha ** 2 + (1 - alpha) ** 2)
    # nu (h + alpha (h_block - h)) = nu (1 - alpha) h + nu alpha h_block: the coefficients are n_embd-vectors, and the
    # sum is one multiply and one fused multiply-add over the activations
    return torch.addcmul(h.float() * (nu * (1 - alpha)), h_block.float(), nu * alpha)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        # the eigen learning rates alpha_A and alpha_M: per-channel step sizes toward the block outputs
        self.alpha_attn = Scale(config.n_embd, config.alpha_init, config.base_scale)
        self.alpha_mlp = Scale(config.n_embd, config.alpha_init, config.base_scale)

    def forward(self, h, tables):
        # spec 3.4: h <- nu(alpha_A) (h + alpha_A (h_A - h)), then the same with alpha_M and h_M; abs() as nGPT
        h = step_near_sphere(h, self.attn(h, tables), self.alpha_attn().abs())
        h = step_near_sphere(h, self.mlp(h), self.alpha_mlp().abs())
        return h


ATTN_OUT_NORMS = ("sqrt_pos", "exact", "none")


@dataclass
class Config:
    block_size: int = 1024     # context length the model is trained on
    vocab_size: int = 50304    # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    rope: str = "standard"     # positional encoding: "standard" RoPE, or NVIDIA's "reference" transform
    alpha_init: float = 0.05   # initial alpha_A, alpha_M: 0.05 (nGPT's) measured better than the summaries' 0.01
    attn_out_norm: str = "sqrt_pos"  # attention-output factor: "sqrt_pos" (sqrt(t)), "exact" (F.normalize), "none"
    qk_norm_exact: bool = False  # exact per-head normalization of q and k (computes vector norms)

    @property
    def base_scale(self):
        # 1/sqrt(n_embd): the s_scale of alpha and s_z, as in nGPT. Derived, not an option
        return self.n_embd ** -0.5


class Model(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        assert config.rope in ("standard", "reference"), f"unknown rope {config.rope!r}"
        assert config.attn_out_norm in ATTN_OUT_NORMS, f"unknown attn_out_norm {config.attn_out_norm!r}"
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # not tied to wte
        # s_z: h is about a unit vector and the rows of lm_head have norm <= 1, so the raw logits lie in about
        # [-1, 1]; s_z restores their temperature, per vocabulary entry (spec 3.7)
        self.s_z = Scale(config.vocab_size, 1.0, config.base_scale)
        # every matrix starts with unit rows along its input axis: random directions on the sphere, the inside of
        # the ball that after_step() keeps them in. Starting normalized is why no warmup is needed (spec 4)
        self.apply(self._init_weights)
        # positional tables for the training length; buffers follow .to(device) but stay out of checkpoints
        rope_a, rope_b = rope_tables(config.rope, config.block_size, config.n_embd // config.n_head, "cpu")
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
        head_dim = self.config.n_embd // self.config.n_head
        return rope_tables(self.config.rope, seq_len, head_dim, self.rope_a.device)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        tables = self.rope_tables(T)
        h = self.transformer.wte(idx)  # (B, T, C), rows of norm <= 1 (unit at init)
        for block in self.transformer.h:
            h = block(h, tables)
        # no final norm: h is about a unit vector already
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

        Called by train.py after every optimizer step (and once before the first). Rows already inside the ball are
        left exactly as they are (divided by 1.0); only rows that Adam pushed outside are pulled back to the sphere.
        The input axis is dim 1 of every matrix: the (out, in) Linear weights and the (V, n_embd) wte. For the output
        projections (the two c_proj) that differs from ngpt.py, which normalizes their columns (spec 4).
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
