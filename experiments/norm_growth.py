"""
Norm growth and saturation (Merrill et al., "Effects of Parameter Norm Growth During Transformer Training:
Inductive Bias from Gradient Descent", EMNLP 2021). A transformer's parameter norm grows like sqrt(t) under gradient
descent, which drives the network toward its "saturated" version, where attention heads become argmax-like or
mean-like; nGPT and anGPT bound their norms by construction. train.py logs the metrics (norms.py); this plots and
tabulates them.

Train GPT, nGPT and anGPT with their recipes, and GPT without weight decay, at a constant LR, and with both, the
setting of the paper's sqrt(t) law (--models, --seeds, --iters and any train.py option as in compare.py):
$ python -m experiments.norm_growth --seeds 1 --out_dir results/norms

The same plots and tables of finished runs of any model, here the convergence comparison's:
$ python -m experiments.norm_growth --runs results/cpu/runs --out_dir results/cpu/norms

Writes into --out_dir (default norms_out/): norms.png (the parameter norm against steps, log-log, with each model's
late slope), saturation.png (per layer at initialization and at the end, and the attention-logit std over
training), heads.png (histograms over the heads at the end), results.md (the tables and the command) and
results.json (the numbers behind them).
"""

import json
import shlex
import sys
from pathlib import Path

import numpy as np

import compare
import train
from train import ConfigError

# the three recipes, and GPT toward the setting of the sqrt(t) law: one change at a time, then both
MODELS = ("gpt", "ngpt", "angpt", "gpt_no_wd", "gpt_const_lr", "gpt_no_wd_const_lr")
NORM_KINDS = {True: "every parameter but the embeddings (gains included)",
              False: "the 2-D block matrices (logs written before the gains were counted)"}
# Merrill et al.'s growth laws (sec. 3, t5_norm_regression.py): least squares rho = a f(t) + b for each feature map.
# Their exponential is exp(-t) of the raw step, a constant after the first steps; here exp(t / t_max) instead
GROWTH_LAWS = {"sqrt(t)": np.sqrt, "t": lambda t: t, "t^(1/4)": lambda t: t ** 0.25,
               "exp(t/t_max)": lambda t: np.exp(t / t.max())}


# -----------------------------------------------------------------------------
# The runs' metrics, and their means over seeds

def read_run(folder):
    """One run's metrics: the parameter norm at every step record, the eval records' saturation, head statistics
    and ||h||."""
    config, records, evals = compare.read_run_log(folder)
    normed = {r["iter"]: r for r in records if "param_norm" in r}
    if not evals or "saturation" not in evals[0]:
        raise ConfigError(f"{folder} has no eval records with the norm-growth metrics")
    iters = sorted(normed)
    # logs written before the alignment was logged count only the 2-D block matrices in param_norm
    aligned = all("alignment" in normed[it] for it in iters)
    return dict(key=compare.variant_of(config), seed=config["seed"], config=config, norm_iters=iters,
                param_norm=[normed[it]["param_norm"] for it in iters], norm_kind=NORM_KINDS[aligned],
                alignment=[normed[it]["alignment"] for it in iters] if aligned else None,
                heads_saturated=evals[-1].get("heads_saturated"), sat_iters=[r["iter"] for r in evals],
                saturation=[r["saturation"] for r in evals], saturation_attn=[r["saturation_attn"] for r in evals],
                attn_logit_std=[r["attn_logit_std"] for r in evals], saturation_kind=evals[-1]["saturation_kind"],
                heads_first=evals[0]["heads"], heads_final=evals[-1]["heads"],
                hidden_norm=[r["hidden_norm"] for r in evals])


def norm_growth_exponent(steps, norms):
    """The late log-log slope of the parameter norm: OLS of log(norm) on log(step) over the second half of the run
    (Merrill et al. 2021, sec. 3: T5's norm grows like sqrt(t)). sqrt(t) growth gives 0.5, a constant norm 0; a norm that starts at
    rho_0 > 0 and grows like sqrt(t) shows a smaller slope early, approaching 0.5 later. None below 3 points."""
    steps, norms = np.asarray(steps, dtype=float), np.asarray(norms, dtype=float)
    late = (steps >= steps[-1] / 2) & (steps > 0) & (norms > 0)
    if late.sum() < 3:
        return None
    return float(np.polyfit(np.log(steps[late]), np.log(norms[late]), 1)[0])


def fit_growth(steps, norms):
    """{law: (a, b, r2)}: the least-squares fit of norm = a f(step) + b for each of GROWTH_LAWS, and its r2."""
    t, rho = np.asarray(steps, dtype=float) + 1, np.asarray(norms, dtype=float)  # step records count from 1
    fits = {}
    for law, f in GROWTH_LAWS.items():
        x = f(t)
        a = ((x - x.mean()) * (rho - rho.mean())).mean() / x.var() if x.var() > 0 else 0.0
        b = rho.mean() - a * x.mean()
        residual = rho - (a * x + b)
        fits[law] = (float(a), float(b), float(1 - residual.var() / rho.var()) if rho.var() > 0 else None)
    return fits


def mean_norm_curve(runs):
    """The parameter norm (train.py's param_norm) averaged over seeds, on the logged steps all
    seeds share."""
    iters = sorted(set.intersection(*(set(r["norm_iters"]) for r in runs)))
    norms = np.array([[r["param_norm"][r["norm_iters"].index(it)] for it in iters] for r in runs])
    aligned = all(r["alignment"] is not None for r in runs)
    alignment = (np.array([[r["alignment"][r["norm_iters"].index(it)] for it in iters] for r in runs])
                 if aligned else None)
    return dict(iters=iters, param_norm=norms.mean(0).tolist(), lo=norms.min(0).tolist(), hi=norms.max(0).tolist(),
                kind=runs[0]["norm_kind"], exponent=norm_growth_exponent(iters, norms.mean(0)),
                fits=fit_growth(iters, norms.mean(0)),
                alignment=alignment.mean(0).tolist() if aligned else None)


def mean_saturation(runs):
    """Per model, from the eval records' saturation metrics: the saturation per layer at the first evaluation (the
    fresh model, the random-init reference) and the last, mean over seeds; the attention-logit std per evaluation,
    mean over seeds, as the mean, lowest and highest layer; and the per-head statistics of all seeds together."""
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
                heads_first=heads("heads_first"), heads_final=heads("heads_final"),
                heads_saturated=[c for r in runs for layer in r["heads_saturated"] for c in layer]
                if all(r["heads_saturated"] for r in runs) else None)


def mean_hidden_norm(runs):
    """The mean ||h|| after each block at the first evaluation (the fresh model) and the last, mean over seeds, with
    the lowest and highest seed at the last."""
    final = np.array([r["hidden_norm"][-1] for r in runs])  # (seeds, layers)
    return dict(first=np.mean([r["hidden_norm"][0] for r in runs], axis=0).round(4).tolist(),
                final=final.mean(0).round(4).tolist(), final_lo=final.min(0).tolist(), final_hi=final.max(0).tolist())


def summarize(runs):
    """{key: the seeds of one model together}: its mean norm curve, saturation and hidden-state norm."""
    keys = [k for k in compare.VARIANTS if any(r["key"] == k for r in runs)]
    keys += sorted({r["key"] for r in runs} - set(keys))
    models = {}
    for key in keys:
        mine = [r for r in runs if r["key"] == key]
        models[key] = dict(label=compare.label(key), seeds=[r["seed"] for r in mine], norms=mean_norm_curve(mine),
                           saturation=mean_saturation(mine), hidden_norm=mean_hidden_norm(mine))
    return models


def saturated_head_classes(counts, block_size, argmax_count=1.5, mean_fraction=0.5):
    """(argmax-like, mean-like, in between) among the saturated network's head counts (Merrill et al., sec. 4.3):
    argmax-like at most 1.5 positions, mean-like at least half of the positions a query sees on average
    (queries from norms.t_min_of on)."""
    t_min = min(16, block_size // 4)
    mean_positions = (t_min + 1 + block_size) / 2
    argmax = sum(c <= argmax_count for c in counts)
    mean = sum(c > argmax_count and c >= mean_fraction * mean_positions for c in counts)
    return argmax, mean, len(counts) - argmax - mean


def head_classes(heads, argmax_count=1.5, mean_fraction=0.5):
    """(argmax-like, mean-like, in between) head counts, the two kinds of Merrill et al. 2021, sec. 4.3: argmax-like if
    at temperature 1/10 it keeps at most 1.5 positions on average, mean-like if it spreads over at least half of the
    positions it sees."""
    argmax = sum(c <= argmax_count for c in heads["count_c10"])
    mean = sum(c > argmax_count and f >= mean_fraction for c, f in zip(heads["count_c10"], heads["f_eff"]))
    return argmax, mean, len(heads["f_eff"]) - argmax - mean


# -----------------------------------------------------------------------------
# Plots and tables

def plot_norms(models, path, title):
    """The block matrices' norm against the step on log-log axes, each model's late slope in its label, and a
    sqrt(t) line for reference: the law Merrill et al. find for undecayed transformers."""
    plt = compare.pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, (ax, right) = plt.subplots(1, 2, figsize=(18, 6), gridspec_kw=dict(width_ratios=(3, 2)))
    plot_alignment(models, right)
    for key, m in models.items():
        n = m["norms"]
        slope = "-" if n["exponent"] is None else f"{round(n['exponent'], 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
        ax.plot(n["iters"], n["param_norm"], color=compare.COLORS.get(key), lw=2, label=f"{m['label']} (late slope {slope})")
        if len(m["seeds"]) > 1:
            ax.fill_between(n["iters"], n["lo"], n["hi"], color=compare.COLORS.get(key), alpha=0.2, lw=0)
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
    ax.set_ylabel("parameter norm (no embeddings)")
    ax.set_title("late slope: log-log OLS over the second half of the run")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_alignment(models, ax):
    """cos(theta, delta), the alignment of each logged step with the parameters (Merrill et al., sec. 5.5): positive,
    the step grows the norm."""
    for key, m in models.items():
        if m["norms"]["alignment"] is not None:
            ax.plot(m["norms"]["iters"], m["norms"]["alignment"], color=compare.COLORS.get(key), lw=1.2,
                    label=m["label"])
    ax.axhline(0, color="gray", lw=1)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("cos(theta, step)")
    ax.set_title("alignment of the step with the parameters")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)


def plot_saturation(models, path, title):
    """Saturation per layer at the start and the end of training, in each model's own definition and in the common
    attention-temperature one, and the attention-logit std over training."""
    plt = compare.pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    for key, m in models.items():
        sat, color = m["saturation"], compare.COLORS.get(key)
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
    plt = compare.pyplot()

    keys = list(models)
    fig, axes = plt.subplots(3, len(keys), figsize=(4.2 * len(keys), 11), squeeze=False)
    most = max(max(m["saturation"]["heads_first"]["count_c10"] + m["saturation"]["heads_final"]["count_c10"]
                   + (m["saturation"]["heads_saturated"] or [])) for m in models.values())
    count_bins = np.geomspace(1, max(2.0, most * 1.05), 21)
    for col, key in enumerate(keys):
        m, color = models[key], compare.COLORS.get(key)
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
        saturated, ax = m["saturation"]["heads_saturated"], axes[2, col]
        if saturated is not None:  # Merrill et al.'s count: the saturated network, every position with weight > 1e-5
            ax.hist(saturated, bins=count_bins, color=color, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("positions with weight > 1e-5, saturated x 1000")
        ax.set_ylabel("heads")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(models, block_size):
    """The results.md sections, as lines: the parameter norm, saturation and attention heads, the hidden-state norm."""
    lines = ["## Parameter norm", "",
             "| model | first logged | final | final / first | late log-log slope | alignment |",
              "|---|---|---|---|---|---|"]
    for m in models.values():
        n = m["norms"]
        alignment = "-" if n["alignment"] is None else f"{np.median(n['alignment']):+.3f}"
        lines.append(f"| {m['label']} | {n['param_norm'][0]:.1f} (step {n['iters'][0] + 1}) | "
                     f"{n['param_norm'][-1]:.1f} | {n['param_norm'][-1] / n['param_norm'][0]:.2f}x | "
                     f"{'-' if n['exponent'] is None else format(n['exponent'], '.3f')} | {alignment} |")
    kinds = sorted({m["norms"]["kind"] for m in models.values()})
    lines += ["", f"The norm of {' or '.join(kinds)}, mean over seeds. Late slope: OLS of log(norm) on log(step) "
              "over the second half of the run; sqrt(t) growth gives 0.5, a constant norm 0. Alignment: "
              "cos(theta, step) at the step records, median over the run (Merrill et al., sec. 5.5).", ""]
    lines += ["## Growth law", "", "| model | a sqrt(t) + b: a, b | r2: sqrt(t) | t | t^(1/4) | exp(t/t_max) |",
              "|---|---|---|---|---|---|"]
    for m in models.values():
        fits = m["norms"]["fits"]
        a, b, _ = fits["sqrt(t)"]
        r2 = " | ".join("-" if fit[2] is None else f"{fit[2]:.4f}" for fit in fits.values())
        lines.append(f"| {m['label']} | {a:.3f}, {b:.1f} | {r2} |")
    lines += ["", "Least squares of the mean norm on f(t) with an intercept, f each law of Merrill et al.'s sec. 3 "
              "(their exponential, exp(-t) of the raw step, is a constant after the first steps: here exp(t / "
              "t_max)), over every step record.", ""]
    per_layer = lambda values: " ".join(f"{v:.2f}" for v in values)
    lines += ["## Saturation and attention heads", "",
              "| model | saturation: definition | per layer, init -> final | attention logits x 100, init -> final "
              "| attention-logit std, init -> final | mean n_eff per head | heads: argmax-like / mean-like / between "
              "| saturated x 1000: argmax-like / mean-like / between |",
              "|---|---|---|---|---|---|---|---|"]
    for m in models.values():
        sat = m["saturation"]
        n_eff = sat["heads_final"]["n_eff"]
        saturated = ("-" if sat["heads_saturated"] is None
                     else " / ".join(map(str, saturated_head_classes(sat["heads_saturated"], block_size))))
        lines.append(f"| {m['label']} | {sat['kind']} | {per_layer(sat['first'])} -> {per_layer(sat['final'])} | "
                     f"{per_layer(sat['attn_first'])} -> {per_layer(sat['attn_final'])} | "
                     f"{sat['logit_std'][0]:.3f} -> {sat['logit_std'][-1]:.2f} | "
                     f"{sum(n_eff) / len(n_eff):.1f} (init {np.mean(sat['heads_first']['n_eff']):.1f}) | "
                     f"{' / '.join(map(str, head_classes(sat['heads_final'])))} | "
                     f"{saturated} |")
    lines += ["", "Saturation (Merrill et al. 2021): per layer, the mean over the tokens of a fixed validation batch "
              "of cos(h, h saturated), where the saturated network has every parameter times 1000 (GPT: the "
              "paper's definition) or its attention logits times 100 (nGPT and anGPT, whose matrices are "
              "scale-free; and every model in the second column). Init: the first evaluation, of the fresh "
              "model. n_eff = exp(entropy) of a head's attention weights, over queries 16 and later; a head "
              "is argmax-like if it keeps at most 1.5 positions with weight > 1e-5 at logits x 10, mean-like "
              "if n_eff is at least half the positions it sees. Saturated x 1000: Merrill et al.'s own count, "
              "the positions with weight > 1e-5 in the saturated network (GPT: every parameter x 1000; nGPT and "
              "anGPT: the attention logits x 1000), argmax-like at most 1.5, mean-like at least half the "
              "positions a query sees on average. Heads of all seeds together.", ""]
    lines += ["## Hidden-state norm", "", "| model | mean norm of h after each block: init -> final |", "|---|---|"]
    for m in models.values():
        n = m["hidden_norm"]
        lines.append(f"| {m['label']} | {' '.join(f'{v:.2f}' for v in n['first'])} -> "
                     f"{' '.join(f'{v:.2f}' for v in n['final'])} |")
    lines += ["", "The residual stream after each block, mean over the tokens of the fixed validation batch of the "
              "saturation metrics, mean over seeds. Init: the first evaluation, of the fresh model.", ""]
    return lines


# -----------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = compare.script_parser("experiments.norm_growth", __doc__, "norms_out")
    p.add_argument("--runs", nargs="+", help="plot and tabulate these train.py runs (or folders of them) instead")
    args, rest = p.parse_known_args(argv)
    out_dir = Path(args.out_dir)
    if args.runs:
        if rest:
            p.error(f"{' '.join(rest)}: train.py options have no effect with --runs")
        folders = compare.run_folders(args.runs)
    else:
        keys = compare.choose_models(args.models, MODELS)
        folders = [Path(r["dir"]) for r in compare.train_runs(keys, args.seeds, out_dir, rest, args.iters)]
    runs = [read_run(folder) for folder in folders]
    models = summarize(runs)
    c = runs[0]["config"]
    n_seeds = max(len(m["seeds"]) for m in models.values())
    title = (f"{c['preset']} preset: {c['dataset']}, {c['n_layer']} layers, width {c['n_embd']}, "
             f"{max(r['config']['max_iters'] for r in runs)} steps, {n_seeds} seed{'s' * (n_seeds > 1)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_norms(models, out_dir / "norms.png", "Parameter norm, " + title)
    plot_saturation(models, out_dir / "saturation.png", "Saturation, " + title)
    plot_heads(models, out_dir / "heads.png", "Attention heads, " + title)
    command = "python -m experiments.norm_growth " + shlex.join(argv)
    lines = [f"# Norm growth and saturation: {title}", "", *markdown(models, c["block_size"]),
             "## Command", "", "```sh", command, "```", ""]
    (out_dir / "results.md").write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(dict(command=command, models=models), indent=1) + "\n")
    print(f"wrote norms.png, saturation.png, heads.png, results.md and results.json in {out_dir}")
    return models


if __name__ == "__main__":
    train.run_main(main, "experiments.norm_growth")
