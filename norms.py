"""
The measurements of Merrill et al., "Effects of Parameter Norm Growth During Transformer Training: Inductive Bias
from Gradient Descent" (EMNLP 2021), as train.py logs them for every model:

- every step record: the parameter norm (sec. 3: it grows like sqrt(t)), per layer, the relative step, its
  alignment with the parameters (sec. 5.5) and the direction cosine between logged parameter vectors
  (directional convergence, sec. 4);
- every eval record: saturation (Definition 1, sec. 4.1: how close the network is to its large-norm limit), the
  attention-logit std and the head statistics (argmax-like and mean-like heads, secs. 4.2 and 4.3), the learned
  scales, and the mean ||h|| after each block.

experiments/norm_growth.py plots and tabulates them over finished runs.
"""

import copy
import math
from contextlib import contextmanager

import torch
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# Parameter-norm metrics (Merrill et al., EMNLP 2021: a transformer's parameter norm grows like sqrt(t))

def norm_group(model):
    """(layer, parameter) for the parameters whose norm is tracked: every parameter that is not a scalar (Merrill et
    al., App. A, and their code's len(shape) > 0), the RMSNorm gains and nGPT's and anGPT's scale vectors included,
    but not the embeddings (wte, and here the untied lm_head too), which their App. A advises leaving out. layer is
    None for the parameters outside the blocks (the final norm's gain, nGPT's s_z)."""
    return [(int(name.split(".")[2]) if name.startswith("transformer.h.") else None, p)
            for name, p in model.named_parameters()
            if p.dim() >= 1 and not name.startswith(("transformer.wte.", "lm_head."))]


def total_norm(tensors):
    return torch.stack(torch._foreach_norm(tensors)).square().sum().sqrt()


@torch.no_grad()
def norm_metrics(group, before_step, last_logged):
    """From the tracked parameters as they are now (theta) and before the step (theta_prev):
      param_norm         ||theta||, and param_norm_layers, the same per block
      rel_step           ||delta|| / ||theta_prev||, with delta = theta - theta_prev, the step
      alignment          cos(theta_prev, delta): how much the step grows the norm (Merrill et al., sec. 5.5)
      dir_cos            cos(theta, the last logged theta): directional convergence (sec. 4)"""
    layers = [layer for layer, _ in group]
    now = [p.detach().float() for _, p in group]
    squares = torch.stack(torch._foreach_norm(now)) ** 2
    in_blocks = [i for i, layer in enumerate(layers) if layer is not None]
    n_layers = max(layers[i] for i in in_blocks) + 1
    layer_norms = torch.zeros(n_layers, device=squares.device).index_add_(
        0, torch.tensor([layers[i] for i in in_blocks], device=squares.device), squares[in_blocks]).sqrt()
    norm = squares.sum().sqrt()
    step = torch._foreach_sub(now, before_step)
    step_norm, before_norm = total_norm(step), total_norm(before_step)
    along = sum((d * b).sum() for d, b in zip(step, before_step))
    out = dict(param_norm=norm.item(), param_norm_layers=layer_norms.tolist(),
               rel_step=(step_norm / before_norm).item(), alignment=(along / (step_norm * before_norm)).item())
    if last_logged is not None:
        dot = sum((a * b).sum() for a, b in zip(now, last_logged))
        out["dir_cos"] = (dot / (norm * total_norm(last_logged))).item()
    return out


class ParamNorms:
    """norm_metrics for train.py's step records: remember() the tracked parameters before a logged step, metrics()
    after it. remember=True keeps the parameters as they are now as the last logged ones (a run resumed right
    after a step record)."""

    def __init__(self, model, remember=False):
        self.group = norm_group(model)
        self.before_step, self.last_logged = None, self.copy() if remember else None

    def copy(self):
        return [p.detach().float().clone() for _, p in self.group]

    def remember(self):
        self.before_step = self.copy()

    def metrics(self):
        out = norm_metrics(self.group, self.before_step, self.last_logged)
        self.last_logged = self.copy()
        return out


@torch.no_grad()
def scale_summary(model):
    """The mean effective value of every 1-D parameter: RMSNorm gains, and nGPT's and anGPT's learned scales
    (stored raw, used times s_init/s_scale; alphas through abs())."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 1:
            effective = weight.float() * (module.s_init / module.s_scale) if hasattr(module, "s_init") else weight.float()
            out[name] = (effective.abs() if "alpha" in name else effective).mean().item()
    return out


# -----------------------------------------------------------------------------
# Saturation and attention metrics, at every evaluation (Merrill et al. 2021: Definition 1, sections 4.1 to 4.3).
# All on a fixed validation batch, in fp32 without autocast, on the uncompiled model

SATURATION_C = 1000.0   # the paper's saturation: every parameter times c = 1000 (see eval_metrics())
ATTENTION_C = 100.0     # the attention-temperature variant: the attention logits times c = 100, for every model
HEAD_COUNT_CS = (10, 100)  # head analysis: how many positions keep a weight > 1e-5 at these temperatures
PROBE_TOKENS = 2048     # the metrics' validation batch: PROBE_TOKENS // block_size sequences (at least 1)


@contextmanager
def attention_probe(logit_mult=1.0, record=None):
    """Within it, every call of F.scaled_dot_product_attention, the attention of every model here, has its logits
    multiplied by logit_mult (its scale times logit_mult) and, with a list `record`, appends them to it, (B, nh, T, T)
    in fp32 before the causal mask: one per layer and forward pass, in the order the layers run. The models carry
    nothing for it."""
    sdpa = F.scaled_dot_product_attention

    def probed(q, k, v, *args, scale=None, **kwargs):
        scale = (1 / math.sqrt(q.size(-1)) if scale is None else scale) * logit_mult
        if record is not None:
            record.append(scale * (q.float() @ k.float().transpose(-2, -1)))
        return sdpa(q, k, v, *args, scale=scale, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = probed
    try:
        yield record
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa


@torch.no_grad()
def block_outputs(model, idx, params=None):
    """The residual stream after every block, [(B, T, C) in fp32], caught by forward hooks on the blocks. With
    `params` the model runs with those parameters instead of its own (torch.func.functional_call): the live
    model is never modified."""
    outputs = []
    hooks = [block.register_forward_hook(lambda module, args, out: outputs.append(out.float()))
             for block in model.transformer.h]
    try:
        if params is None:
            model(idx)
        else:
            torch.func.functional_call(model, params, (idx,))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


@torch.no_grad()
def saturation(model, idx, kind):
    """Per block, the mean over tokens of cos(h_l(x; theta), h_l(x; saturated theta)): how close the network is to
    its large-norm limit, to which norm growth drives it (Merrill et al., section 2). kind "params": every
    parameter times SATURATION_C, the paper's definition (embeddings, gains and head included). It means nothing
    for nGPT and anGPT, whose matrices enter only through normalized vectors or factors fixed by the shapes, so
    scaling them changes almost nothing; kind "attention" instead multiplies every attention logit by ATTENTION_C,
    which for GPT is the same as scaling W_q by c and for nGPT the same as scaling s_qk by sqrt(c)."""
    plain = block_outputs(model, idx)
    if kind == "params":
        saturated = block_outputs(model, idx, {name: p * SATURATION_C for name, p in model.named_parameters()})
    else:
        with attention_probe(logit_mult=ATTENTION_C):
            saturated = block_outputs(model, idx)
    cosines = [F.cosine_similarity(a, b, dim=-1).mean() for a, b in zip(plain, saturated)]
    return [round(v, 5) for v in torch.stack(cosines).tolist()]


@torch.no_grad()
def head_stats(logits, t_min, counts_at=HEAD_COUNT_CS, threshold=1e-5):
    """Per head, from its pre-softmax logits (B, nh, T, T) before the causal mask: the mean over sequences and
    queries t >= t_min (fewer keys say little) of (Merrill et al., sec. 4.3, for causal attention)
      n_eff      exp(entropy of the attention weights): the positions attended; one-hot 1, uniform over s <= t: t + 1
      f_eff      n_eff / (t + 1), the same as a fraction of the positions visible
      count_c    #{s <= t : softmax(c * logits)_s > threshold}, the paper's count at the finite temperature 1/c
      logit_std  the std of the logits over s <= t: the effective attention temperature
    Returns {name: [one value per head]}."""
    T = logits.size(-1)
    visible = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()[t_min:]  # (T - t_min, T): s <= t
    logits = logits.float()[:, :, t_min:].masked_fill(~visible, float("-inf"))  # (B, nh, T - t_min, T)
    positions = visible.sum(-1).float()  # t + 1
    weights = logits.softmax(-1)
    n_eff = torch.exp(-torch.special.xlogy(weights, weights).sum(-1))  # xlogy(0, 0) = 0 for the masked keys
    mean = logits.masked_fill(~visible, 0.0).sum(-1, keepdim=True) / positions[:, None]
    var = (logits - mean).masked_fill(~visible, 0.0).square().sum(-1) / positions
    out = dict(n_eff=n_eff, f_eff=n_eff / positions, logit_std=var.sqrt())
    for c in counts_at:
        out[f"count_c{c:g}"] = ((c * logits).softmax(-1) > threshold).sum(-1).float()
    return {name: [round(v, 4) for v in value.mean(dim=(0, 2)).tolist()] for name, value in out.items()}


@torch.no_grad()
def attention_logits(model, idx, params=None, logit_mult=1.0):
    """Every layer's pre-softmax logits [(B, nh, T, T)] in one forward pass: of the model as it is, with `params`
    instead of its own (functional_call), or with every logit times logit_mult."""
    with attention_probe(logit_mult, record=[]) as logits:
        if params is None:
            model(idx)
        else:
            torch.func.functional_call(model, params, (idx,))
    return logits


def t_min_of(idx):
    return min(16, idx.size(1) // 4)


@torch.no_grad()
def attention_stats(model, idx):
    """head_stats() of every layer: {name: [[one value per head] per layer]} ({} for a model whose attention is not
    F.scaled_dot_product_attention)."""
    per_layer = [head_stats(logits, t_min_of(idx)) for logits in attention_logits(model, idx)]
    return {name: [layer[name] for layer in per_layer] for name in per_layer[0]} if per_layer else {}


@torch.no_grad()
def saturated_head_counts(model, idx, kind):
    """Per layer and head, the positions that keep an attention weight above 1e-5 in the saturated network, mean over
    queries (Merrill et al., sec. 4.3, their saturate.py, here with the causal mask as -inf): 1 for an argmax-like
    head, t + 1 for a mean-like one. kind as in saturation(): every parameter times SATURATION_C, or (nGPT, anGPT)
    every attention logit times SATURATION_C."""
    if kind == "params":
        logits = attention_logits(model, idx, {name: p * SATURATION_C for name, p in model.named_parameters()})
    else:
        logits = attention_logits(model, idx, logit_mult=SATURATION_C)
    return [head_stats(layer, t_min_of(idx), counts_at=(1,))["count_c1"] for layer in logits]


@torch.no_grad()
def norm_is_held(model):
    """Whether the model's after_step() takes back a growth of its weights, as nGPT's sphere and anGPT's ball do: then
    the large-norm limit that Merrill et al.'s saturation stands for is out of its reach. Tried on a copy whose
    parameters are doubled."""
    grown = copy.deepcopy(model)
    for p in grown.parameters():
        p.mul_(2.0)
    before = total_norm([p.float() for p in grown.parameters()])
    grown.after_step()
    return bool(total_norm([p.float() for p in grown.parameters()]) < 0.9 * before)


def eval_metrics(model, idx):
    """The eval record's saturation and attention fields. The model must be the uncompiled one; it is run in eval
    mode and fp32 (the saturated logits reach c^4 = 1e12: bf16 would round near-equal ones to ties, fp16 overflow)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):  # --param_dtype bfloat16: measure an fp32 copy
        model = copy.deepcopy(model).float()
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(idx.device.type, enabled=False):
            # GPT's weights are free to grow, and it is about homogeneous in them, so the paper's definition applies
            # (sec. 5.2); nGPT and anGPT hold their weights' norm, and get the attention-temperature variant under
            # the same name, and say so
            kind = "attention" if norm_is_held(model) else "params"
            main = saturation(model, idx, kind)
            heads = attention_stats(model, idx)
            hidden_norm = [round(h.norm(dim=-1).mean().item(), 4) for h in block_outputs(model, idx)]
            return dict(saturation=main,
                        saturation_kind=f"all parameters x {SATURATION_C:g}" if kind == "params"
                        else f"attention logits x {ATTENTION_C:g}",
                        saturation_attn=saturation(model, idx, "attention") if kind == "params" else main,
                        attn_logit_std=[round(sum(layer) / len(layer), 4) for layer in heads.get("logit_std", [])],
                        heads=heads, hidden_norm=hidden_norm, heads_saturated=saturated_head_counts(model, idx, kind))
    finally:
        model.train(was_training)


