"""
The measurements of Merrill et al., "Effects of Parameter Norm Growth During Transformer Training: Inductive Bias
from Gradient Descent" (EMNLP 2021), as train.py logs them for every model:

- every step record: the parameter norm of the block matrices (sec. 3: it grows like sqrt(t)), per layer, the
  relative step and the direction cosine between logged parameter vectors (directional convergence, sec. 4);
- every eval record: saturation (Definition 1, sec. 4.1: how close the network is to its large-norm limit), the
  attention-logit std and the head statistics (argmax-like and mean-like heads, secs. 4.2 and 4.3), the learned
  scales, and the mean ||h|| after each block.

train.py calls the metrics and needs nothing else from here. The reports at the end of this file tabulate and plot
them over finished runs (compare.py adds them to its results), and so does this file as a script:
$ python norms.py --runs results/norms/runs --out_dir norms_out
writes norms.png (parameter norm against steps, log-log), saturation.png (per layer, and the attention-logit std over
training), heads.png (histograms over the heads) and results.md (the tables), for runs of any model.
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from variants import COLORS, VARIANTS, label, read_run_log, run_folders, variant_of


# -----------------------------------------------------------------------------
# Parameter-norm metrics (Merrill et al., EMNLP 2021: a transformer's parameter norm grows like sqrt(t))

def norm_group(model):
    """(layer, matrix) for the parameters whose norm is tracked: the 2-D weights inside the transformer blocks.
    As in the paper's T5 analysis, no embeddings (wte, and here the untied lm_head too) and no 0-d or 1-d
    parameters (RMSNorm gains, nGPT's and anGPT's scale vectors), which are logged separately (scale_summary)."""
    return [(int(name.split(".")[2]), p) for name, p in model.named_parameters()
            if name.startswith("transformer.h.") and p.dim() == 2]


@torch.no_grad()
def norm_metrics(group, before_step, last_logged):
    """param_norm (||theta||), param_norm_layers, rel_step (||theta_t+1 - theta_t|| / ||theta_t||) and dir_cos
    (the cosine between this and the last logged theta), from the block matrices as they are now."""
    layers = [layer for layer, _ in group]
    now = [p.detach().float() for _, p in group]
    squares = torch.stack(torch._foreach_norm(now)) ** 2
    n_layers = max(layers) + 1
    layer_norms = torch.zeros(n_layers, device=squares.device).index_add_(0, torch.tensor(layers, device=squares.device), squares).sqrt()
    norm = squares.sum().sqrt()
    step = torch.stack(torch._foreach_norm(torch._foreach_sub(now, before_step))).square().sum().sqrt()
    before_norm = torch.stack(torch._foreach_norm(before_step)).square().sum().sqrt()
    out = dict(param_norm=norm.item(), param_norm_layers=layer_norms.tolist(), rel_step=(step / before_norm).item())
    if last_logged is not None:
        dot = sum((a * b).sum() for a, b in zip(now, last_logged))
        last_norm = torch.stack(torch._foreach_norm(last_logged)).square().sum().sqrt()
        out["dir_cos"] = (dot / (norm * last_norm)).item()
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

SATURATION_C = 1000.0   # the paper's saturation: every parameter times c = 1000 (GPT only, see saturation())
ATTENTION_C = 100.0     # the attention-temperature variant: the attention logits times c = 100, for every model
HEAD_COUNT_CS = (10, 100)  # head analysis: how many positions keep a weight > 1e-5 at these temperatures
PROBE_TOKENS = 2048     # the metrics' validation batch: PROBE_TOKENS // block_size sequences (at least 1)


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
        attentions = [block.attn for block in model.transformer.h]
        for attn in attentions:
            attn.logit_mult = ATTENTION_C
        try:
            saturated = block_outputs(model, idx)
        finally:
            for attn in attentions:
                attn.logit_mult = 1.0
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
def attention_stats(model, idx):
    """head_stats() of every layer: {name: [[one value per head] per layer]}, from the logits the attention modules
    record during one forward pass."""
    attentions = [block.attn for block in model.transformer.h]
    for attn in attentions:
        attn.record_logits = []
    try:
        model(idx)
        logits = [attn.record_logits[0] for attn in attentions]
    finally:
        for attn in attentions:
            attn.record_logits = None
    t_min = min(16, idx.size(1) // 4)
    per_layer = [head_stats(layer_logits, t_min) for layer_logits in logits]
    return {name: [layer[name] for layer in per_layer] for name in per_layer[0]}


def eval_metrics(model, idx, model_name):
    """The eval record's saturation and attention fields. The model must be the uncompiled one; it is run in eval
    mode and fp32 (the saturated logits reach c^4 = 1e12: bf16 would round near-equal ones to ties, fp16 overflow)."""
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(idx.device.type, enabled=False):
            # GPT is about homogeneous in its parameters, so the paper's definition applies to it (sec. 5.2); nGPT
            # and anGPT get the attention-temperature variant under the same name, and say so
            kind = "params" if model_name == "gpt" else "attention"
            main = saturation(model, idx, kind)
            heads = attention_stats(model, idx)
            hidden_norm = [round(h.norm(dim=-1).mean().item(), 4) for h in block_outputs(model, idx)]
            return dict(saturation=main,
                        saturation_kind=f"all parameters x {SATURATION_C:g}" if kind == "params"
                        else f"attention logits x {ATTENTION_C:g}",
                        saturation_attn=saturation(model, idx, "attention") if kind == "params" else main,
                        attn_logit_std=[round(sum(layer) / len(layer), 4) for layer in heads["logit_std"]],
                        heads=heads, hidden_norm=hidden_norm)
    finally:
        model.train(was_training)


# -----------------------------------------------------------------------------
# Reports: these metrics over finished runs (tables, plots). A run is a dict with at least run_fields' fields.

def run_fields(records, evals):
    """The fields of these metrics in one run: from its log records and its eval records (sorted by step, one per
    step). Runs logged before a metric existed have none of it."""
    normed = {r["iter"]: r["param_norm"] for r in records if "param_norm" in r}
    saturated = [r for r in evals if "saturation" in r]
    return dict(norm_iters=sorted(normed), param_norm=[normed[it] for it in sorted(normed)],
                sat_iters=[r["iter"] for r in saturated], saturation=[r["saturation"] for r in saturated],
                saturation_attn=[r["saturation_attn"] for r in saturated],
                attn_logit_std=[r["attn_logit_std"] for r in saturated],
                saturation_kind=saturated[-1]["saturation_kind"] if saturated else None,
                heads_first=saturated[0]["heads"] if saturated else None,
                heads_final=saturated[-1]["heads"] if saturated else None,
                hidden_norm=[r["hidden_norm"] for r in evals if "hidden_norm" in r])


def aggregates(runs):
    """The seeds of one model together: {norms, saturation, hidden_norm}, each None where the runs lack it."""
    return dict(norms=mean_norm_curve(runs), saturation=mean_saturation(runs), hidden_norm=mean_hidden_norm(runs))


def norm_growth_exponent(steps, norms):
    """The late log-log slope of the parameter norm: OLS of log(norm) on log(step) over the second half of the run
    (Merrill et al. 2021, sec. 3: T5's norm grows like sqrt(t)). sqrt(t) growth gives 0.5, a constant norm 0; a norm that starts at
    rho_0 > 0 and grows like sqrt(t) shows a smaller slope early, approaching 0.5 later. None below 3 points."""
    steps, norms = np.asarray(steps, dtype=float), np.asarray(norms, dtype=float)
    late = (steps >= steps[-1] / 2) & (steps > 0) & (norms > 0)
    if late.sum() < 3:
        return None
    return float(np.polyfit(np.log(steps[late]), np.log(norms[late]), 1)[0])


def mean_norm_curve(runs):
    """The parameter norm (train.py's param_norm: the block matrices) averaged over seeds, on the logged steps all
    seeds share; None for runs logged without it."""
    if not all(r["norm_iters"] for r in runs):
        return None
    iters = sorted(set.intersection(*(set(r["norm_iters"]) for r in runs)))
    norms = np.array([[r["param_norm"][r["norm_iters"].index(it)] for it in iters] for r in runs])
    return dict(iters=iters, param_norm=norms.mean(0).tolist(), lo=norms.min(0).tolist(), hi=norms.max(0).tolist(),
                exponent=norm_growth_exponent(iters, norms.mean(0)))


def mean_saturation(runs):
    """Per model, from the eval records' saturation metrics: the saturation per layer at the first evaluation (the
    fresh model, the random-init reference) and the last, mean over seeds; the attention-logit std per evaluation,
    mean over seeds, as the mean, lowest and highest layer; and the per-head statistics of all seeds together. None
    for runs logged without these metrics."""
    if not all(r["sat_iters"] for r in runs):
        return None
    at = lambda field, i: np.mean([r[field][i] for r in runs], axis=0).round(5).tolist()
    iters = sorted(set.intersection(*(set(r["sat_iters"]) for r in runs)))
    # (seeds, evals, layers) -> mean over seeds, then the mean, lowest and highest layer at each evaluation
    logit_std = np.mean([[r["attn_logit_std"][r["sat_iters"].index(it)] for it in iters] for r in runs], axis=0)
    heads = lambda which: {name: [v for r in runs for layer in r[which][name] for v in layer]
                           for name in runs[0][which]}
    return dict(kind=runs[0]["saturation_kind"], first_iter=runs[0]["sat_iters"][0], final_iter=runs[0]["sat_iters"][-1],
                first=at("saturation", 0), final=at("saturation", -1),
                attn_first=at("saturation_attn", 0), attn_final=at("saturation_attn", -1),
                iters=iters, logit_std=logit_std.mean(1).tolist(), logit_std_lo=logit_std.min(1).tolist(),
                logit_std_hi=logit_std.max(1).tolist(),
                heads_first=heads("heads_first"), heads_final=heads("heads_final"))


def mean_hidden_norm(runs):
    """The mean ||h|| after each block at the first evaluation (the fresh model) and the last, mean over seeds, with
    the lowest and highest seed at the last; None for runs logged without it."""
    if not all(r["hidden_norm"] for r in runs):
        return None
    final = np.array([r["hidden_norm"][-1] for r in runs])  # (seeds, layers)
    return dict(first=np.mean([r["hidden_norm"][0] for r in runs], axis=0).round(4).tolist(),
                final=final.mean(0).round(4).tolist(), final_lo=final.min(0).tolist(), final_hi=final.max(0).tolist())


def head_classes(heads, argmax_count=1.5, mean_fraction=0.5):
    """(argmax-like, mean-like, in between) head counts, the two kinds of Merrill et al. 2021, sec. 4.3: argmax-like if
    at temperature 1/10 it keeps at most 1.5 positions on average, mean-like if it spreads over at least half of the
    positions it sees."""
    argmax = sum(c <= argmax_count for c in heads["count_c10"])
    mean = sum(c > argmax_count and f >= mean_fraction for c, f in zip(heads["count_c10"], heads["f_eff"]))
    return argmax, mean, len(heads["f_eff"]) - argmax - mean


def plot_norms(models, path, title):
    """The block matrices' norm against the step on log-log axes, each model's late slope in its label, and a
    sqrt(t) line for reference: the law Merrill et al. find for undecayed transformers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(11, 6))
    for key, m in models.items():
        n = m["norms"]
        slope = "-" if n["exponent"] is None else f"{round(n['exponent'], 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
        ax.plot(n["iters"], n["param_norm"], color=COLORS.get(key), lw=2, label=f"{m['label']} (late slope {slope})")
        if len(m["seeds"]) > 1:
            ax.fill_between(n["iters"], n["lo"], n["hi"], color=COLORS.get(key), alpha=0.2, lw=0)
    first = next(iter(models.values()))["norms"]  # the reference: the last decade, ending where the first model ends
    end, rho = first["iters"][-1], first["param_norm"][-1]
    t = np.geomspace(max(first["iters"][0], end / 10), end, 50)
    ax.plot(t, rho * np.sqrt(t / end), color="gray", ls=":", lw=1.5, label="slope 0.5: sqrt(t)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5, 7)))  # a norm rarely spans a decade: label within one
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("parameter norm of the block matrices")
    ax.set_title("late slope: log-log OLS over the second half of the run")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_saturation(models, path, title):
    """Saturation per layer at the start and the end of training, in each model's own definition and in the common
    attention-temperature one, and the attention-logit std over training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    for key, m in models.items():
        sat, color = m["saturation"], COLORS.get(key)
        layers = np.arange(1, len(sat["final"]) + 1)
        axes[0].plot(layers, sat["final"], color=color, lw=2, marker="o", label=f"{m['label']}: {sat['kind']}")
        axes[0].plot(layers, sat["first"], color=color, lw=1.5, ls="--", marker="o", mfc="white")
        axes[1].plot(layers, sat["attn_final"], color=color, lw=2, marker="o", label=m["label"])
        axes[1].plot(layers, sat["attn_first"], color=color, lw=1.5, ls="--", marker="o", mfc="white")
        axes[2].plot(sat["iters"], sat["logit_std"], color=color, lw=2, label=m["label"])
        axes[2].fill_between(sat["iters"], sat["logit_std_lo"], sat["logit_std_hi"], color=color, alpha=0.15, lw=0)
    for ax, name in zip(axes[:2], ("saturation, each model's definition", "saturation, attention logits x 100 (all models)")):
        ax.set_xlabel("layer (block)")
        ax.set_ylabel("mean cos(h, h saturated)")
        ax.set_title(name)
        ax.set_xticks(layers)
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
        ax.grid(alpha=0.3)
    style = [Line2D([], [], color="gray", lw=2, marker="o", label="end of training"),
             Line2D([], [], color="gray", lw=1.5, ls="--", marker="o", mfc="white", label="initialization")]
    # between the normalized models (near 1) and GPT's all-parameter curves (below 0.5)
    axes[0].legend(handles=axes[0].get_legend_handles_labels()[0] + style, frameon=False, fontsize=9,
                   loc="center right", bbox_to_anchor=(1, 0.66))
    axes[1].legend(handles=axes[1].get_legend_handles_labels()[0] + style, frameon=False, fontsize=9)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("optimizer steps")
    axes[2].set_ylabel("std of the attention logits (mean over heads)")
    axes[2].text(0.02, 0.98, "line: mean over layers; band: lowest to highest layer", transform=axes[2].transAxes,
                 va="top", fontsize=9, color="gray")
    axes[2].set_title("effective attention temperature")
    axes[2].grid(alpha=0.3, which="both")
    axes[2].legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heads(models, path, title):
    """Per model, histograms over its heads (all seeds) of the fraction of visible positions attended (f_eff) and of
    the positions left at temperature 1/10, at the end of training, with the initialization as an outline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(models)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 7.5), squeeze=False)
    most = max(max(m["saturation"]["heads_first"]["count_c10"] + m["saturation"]["heads_final"]["count_c10"])
               for m in models.values())
    count_bins = np.geomspace(1, max(2.0, most * 1.05), 21)
    for col, key in enumerate(keys):
        m, color = models[key], COLORS.get(key)
        first, final = m["saturation"]["heads_first"], m["saturation"]["heads_final"]
        for row, (name, bins, xlabel) in enumerate((("f_eff", np.linspace(0, 1, 21), "exp(entropy) / positions visible"),
                                                    ("count_c10", count_bins, "positions with weight > 1e-5 at logits x 10"))):
            ax = axes[row, col]
            ax.hist(final[name], bins=bins, color=color, alpha=0.7, label="end of training")
            ax.hist(first[name], bins=bins, histtype="step", color="gray", lw=1.5, ls="--", label="initialization")
            if row == 1:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("heads")
            ax.grid(alpha=0.3)
        argmax, mean, other = head_classes(final)
        axes[0, col].set_title(f"{m['label']}\n{argmax} argmax-like, {mean} mean-like, {other} between")
    axes[0, 0].legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(models):
    """The results.md sections of these metrics, as lines: the parameter norm, saturation and attention heads, and
    the hidden-state norm, each where every model has it."""
    lines = []
    if all(m["norms"] for m in models.values()):
        lines += ["## Parameter norm", "", "| model | first logged | final | final / first | late log-log slope |",
                  "|---|---|---|---|---|"]
        for m in models.values():
            n = m["norms"]
            lines.append(f"| {m['label']} | {n['param_norm'][0]:.1f} (step {n['iters'][0] + 1}) | "
                         f"{n['param_norm'][-1]:.1f} | {n['param_norm'][-1] / n['param_norm'][0]:.2f}x | "
                         f"{'-' if n['exponent'] is None else format(n['exponent'], '.3f')} |")
        lines += ["", "The norm of the 2-D weights inside the blocks (no embeddings, no output head, no gains or "
                  "scales), mean over seeds. Late slope: OLS of log(norm) on log(step) over the second half of the "
                  "run; sqrt(t) growth gives 0.5, a constant norm 0.", ""]
    if all(m["saturation"] for m in models.values()):
        per_layer = lambda values: " ".join(f"{v:.2f}" for v in values)
        lines += ["## Saturation and attention heads", "",
                  "| model | saturation: definition | per layer, init -> final | attention logits x 100, init -> final "
                  "| attention-logit std, init -> final | mean n_eff per head | heads: argmax-like / mean-like / between |",
                  "|---|---|---|---|---|---|---|"]
        for m in models.values():
            sat = m["saturation"]
            n_eff = sat["heads_final"]["n_eff"]
            lines.append(f"| {m['label']} | {sat['kind']} | {per_layer(sat['first'])} -> {per_layer(sat['final'])} | "
                         f"{per_layer(sat['attn_first'])} -> {per_layer(sat['attn_final'])} | "
                         f"{sat['logit_std'][0]:.3f} -> {sat['logit_std'][-1]:.2f} | "
                         f"{sum(n_eff) / len(n_eff):.1f} (init {np.mean(sat['heads_first']['n_eff']):.1f}) | "
                         f"{' / '.join(map(str, head_classes(sat['heads_final'])))} |")
        lines += ["", "Saturation (Merrill et al. 2021): per layer, the mean over the tokens of a fixed validation batch "
                  "of cos(h, h saturated), where the saturated network has every parameter times 1000 (GPT: the "
                  "paper's definition) or its attention logits times 100 (nGPT and anGPT, whose matrices are "
                  "scale-free; and every model in the second column). Init: the first evaluation, of the fresh "
                  "model. n_eff = exp(entropy) of a head's attention weights, over queries 16 and later; a head "
                  "is argmax-like if it keeps at most 1.5 positions with weight > 1e-5 at logits x 10, mean-like "
                  "if n_eff is at least half the positions it sees. Heads of all seeds together.", ""]
    if all(m["hidden_norm"] for m in models.values()):
        lines += ["## Hidden-state norm", "", "| model | mean norm of h after each block: init -> final |", "|---|---|"]
        for m in models.values():
            n = m["hidden_norm"]
            lines.append(f"| {m['label']} | {' '.join(f'{v:.2f}' for v in n['first'])} -> "
                         f"{' '.join(f'{v:.2f}' for v in n['final'])} |")
        lines += ["", "The residual stream after each block, mean over the tokens of the fixed validation batch of the "
                  "saturation metrics, mean over seeds. Init: the first evaluation, of the fresh model.", ""]
    return lines


def plot_all(models, out_dir, title):
    """The plots above that every model has the metrics for, into out_dir; their paths. `title` names the runs."""
    written = []
    if all(m["norms"] for m in models.values()):
        plot_norms(models, Path(out_dir) / "norms.png", "Parameter norm, " + title)
        written.append(Path(out_dir) / "norms.png")
    if all(m["saturation"] for m in models.values()):
        plot_saturation(models, Path(out_dir) / "saturation.png", "Saturation, " + title)
        plot_heads(models, Path(out_dir) / "heads.png", "Attention heads, " + title)
        written += [Path(out_dir) / "saturation.png", Path(out_dir) / "heads.png"]
    return written


# -----------------------------------------------------------------------------
# As a script: the reports of finished train.py runs

def read_run(folder):
    config, records, evals = read_run_log(folder)
    return dict(key=variant_of(config), seed=config["seed"], config=config, **run_fields(records, evals))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="norms.py", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--runs", nargs="+", required=True, help="train.py run folders, or folders holding them")
    p.add_argument("--out_dir", default="norms_out", help="default: norms_out")
    args = p.parse_args(argv)
    try:
        runs = [read_run(folder) for folder in run_folders(args.runs)]
    except FileNotFoundError as e:
        p.error(str(e))
    keys = [k for k in VARIANTS if any(r["key"] == k for r in runs)]
    keys += sorted({r["key"] for r in runs} - set(keys))
    models = {k: dict(label=label(k), seeds=[r["seed"] for r in runs if r["key"] == k],
                      **aggregates([r for r in runs if r["key"] == k])) for k in keys}
    c = runs[0]["config"]
    n_seeds = max(len(m["seeds"]) for m in models.values())
    title = (f"{c['preset']} preset: {c['dataset']}, {c['n_layer']} layers, width {c['n_embd']}, "
             f"{max(r['config']['max_iters'] for r in runs)} steps, {n_seeds} seed{'s' * (n_seeds > 1)}")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    written = plot_all(models, args.out_dir, title)
    lines = markdown(models)
    if not lines:
        p.error("these runs were logged without the norm-growth metrics: train them again with this train.py")
    command = "python norms.py " + shlex.join(argv)
    text = "\n".join([f"# Norm growth and saturation: {title}", "", *lines, "## Command", "", "```sh", command, "```", ""])
    (Path(args.out_dir) / "results.md").write_text(text)
    print("wrote " + ", ".join(map(str, [*written, Path(args.out_dir) / "results.md"])))


if __name__ == "__main__":
    main()
