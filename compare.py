"""
How much faster do nGPT and anGPT converge than GPT, and at what cost per step? Trains every model with train.py
on the same data, token budget and evaluation schedule, each with its own paper recipe and learning rate, then
plots the validation loss and writes a table of steps-to-target, speedups and step times.

All models that exist (GPT, GPT+QK-norm, GPT+QK-RMSNorm, nGPT, anGPT), 3 seeds each, on train.py's default preset
(cpu without a GPU: 2000 steps, about 40 minutes on two cores; 20 evaluations per run unless --eval_interval is
given):
$ python compare.py

Fewer seeds, fewer steps, some models; any other option goes to train.py unchanged:
$ python compare.py --seeds 1 --iters 300 --models gpt,ngpt --n_layer 2

Tune each model's learning rate first (recipe LR x 0.25, 0.5, 1, 2, 4 on one seed), then compare at the best:
$ python compare.py --lr-sweep --lr-sweep-iters 500

Plot and tabulate runs made elsewhere, e.g. a multi-hour GPU run (folders of train.py runs, or folders of them):
$ python compare.py --runs out/gpu/gpt out/gpu/ngpt --out_dir compare_gpu --log-x

Baselines follow the papers: nGPT against GPT (nGPT paper), anGPT against GPT+QK-norm (anGPT paper: L2-normalized
q and k and a learned gain), both QK-norm forms against GPT; results.md also gives every model's speedup over each
baseline. The target of a model is its baseline's final validation loss (mean over seeds); its steps to target
are read off its own mean eval curve by linear interpolation, and speedup = baseline steps / model steps.
`--baseline KEY` uses one baseline for all models, `--target-loss X` one target loss for all.

The runs are interleaved (seed 0: gpt, gpt_qk, ngpt, angpt; seed 1: ...) so that whatever else the machine does
slows all models alike. A run that is already complete in --out_dir with the same settings is reused, and an
interrupted one (Ctrl-C) is resumed: run the same command again to go on.

The papers' other claims, one command each (--models, --seeds, --iters and train.py options apply as above):

nGPT and anGPT tolerate a wider range of learning rates. One run per model, value and seed, every model at the same
LR; the final val loss against the LR, a diverged run marked as such (7 values x 4 models x 3 seeds: 84 runs):
$ python compare.py --sweep learning_rate=5e-4,1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2 --out_dir compare_out/lr

anGPT trains well at larger batch sizes. Any batch size sees the preset's token budget: max_iters x batch_size is
fixed, and eval_interval, eval_iters and warmup_iters are scaled with max_iters (likewise for a sweep of
gradient_accumulation_steps). Any other train.py option is swept as it is, e.g. --sweep n_layer=2,4,8:
$ python compare.py --sweep batch_size=8,16,32,64 --out_dir compare_out/batch

Does the speedup grow with the context length, as the nGPT paper finds (4x at 1k, 10x at 4k, 20x at 8k)? Every
model at each context with the same tokens per step (the batch size scales as 1/context), the same steps, each
model's recipe; per context the final losses, steps to target and speedups, and contexts.png:
$ python compare.py --contexts 64,256,1024 --tokens-per-step 1024 --seeds 1 --iters 1000 --out_dir compare_out/contexts

Norm growth (Merrill et al. 2021): a GPT's parameter norm grows like sqrt(t) without weight decay at a constant LR,
which drives it toward its "saturated" version; nGPT and anGPT bound their norms by construction. --norms trains
GPT, nGPT and anGPT with their recipes and a GPT without weight decay at a constant LR (the default models otherwise
are GPT, both GPT+QK-norms, nGPT, anGPT). Every comparison adds the plots and tables of norms.py (norms.png,
saturation.png, heads.png) where its runs have these metrics:
$ python compare.py --norms --seeds 1 --out_dir compare_out/norms

Writes into --out_dir (default compare_out/):
  convergence.png   val loss against steps, tokens and training time (mean over seeds, min-max band)
  norms.png         the parameter norm of the block matrices against steps, log-log, with each model's late slope
  saturation.png    saturation per layer at initialization and at the end, and the attention-logit std over training
  heads.png         histograms over the attention heads at the end of training: fraction of positions attended,
                    positions left at logits x 10
  results.md        the table, the settings and the command line
  results.json      per run the eval curve, final loss and median ms/step; per model the aggregates, the target
                    and the baseline used: everything needed to recompute the table
  runs/<key>-s<seed>/, sweep/<key>-lr<lr>/   the train.py runs
--sweep writes sweep.png (final val loss against the swept value, min-max band over seeds), results.md (rows: values,
columns: models), results.json and sweep/<key>-<option><value>-s<seed>/; --contexts writes contexts.png (speedup
against context), results.md (rows: models, columns: contexts), results.json and runs/<key>-T<context>-s<seed>/.

Length extrapolation of the checkpoints is a question of its own: extrapolate.py.
"""

import argparse
import difflib
import json
import math
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np

import norms
from settings import (DEFAULTS, MODELS, SYSTEM_KEYS, ConfigError, Parser, build_parser, load_model_module,
                      resolve_settings)
import train
from variants import ARCHITECTURES, COLORS, VARIANTS, label, read_log, read_run_log, run_folders, variant_of

# -----------------------------------------------------------------------------
# What is compared (the models themselves: variants.py) and how
DEFAULT_KEYS = ARCHITECTURES  # the convergence comparison
NORMS_KEYS = ("gpt", "ngpt", "angpt", "gpt_const")  # --norms: the three recipes and the undecayed GPT
PAPER_BASELINES = {"gpt": "gpt", "gpt_qk": "gpt", "gpt_qk_rms": "gpt", "ngpt": "gpt", "angpt": "gpt_qk",
                   "gpt_const": "gpt"}
BASELINE_KEYS = ("gpt", "gpt_qk", "gpt_qk_rms")  # every model's steps to each of these baselines' final loss
LR_MULTIPLIERS = (0.25, 0.5, 1, 2, 4)  # --lr-sweep: the grid around each model's recipe LR
EVALS_PER_RUN = 20  # unless --eval_interval is given: steps-to-target interpolates between close points
# --sweep: options plotted on a log axis, and options swept at a fixed token budget (max_iters x value fixed)
LOG_X_OPTIONS = ("learning_rate", "min_lr", "batch_size", "gradient_accumulation_steps")
TOKEN_BUDGET_OPTIONS = ("batch_size", "gradient_accumulation_steps")
RISE_FRACTION = 0.5  # a run whose val loss climbs back more than this part of what it had gained has diverged
NEAR_BEST = 0.02  # --sweep: the values whose final loss is within 2% of a model's best are "near the best"
# --contexts: the nGPT paper's speedups of nGPT over GPT in steps to the same loss, by context length (0.5B and 1B
# parameters, OpenWebText): 4x at 1k, 10x at 4k, 20x at 8k
PAPER_CONTEXT_SPEEDUPS = {1024: 4, 4096: 10, 8192: 20}
TOKENS_PER_STEP = 1024  # --contexts: the default tokens per step at every context (batch size = this / context)
# options compare.py sets itself for every run, with what to use instead
OWN_OPTIONS = {"--model": "--models", "--seed": "--seeds", "--out_dir": "compare.py's --out_dir",
               "--max_iters": "--iters", "--resume": "the same command again"}


# -----------------------------------------------------------------------------
# The numbers: small pure functions

def steps_to_reach(iters, losses, target):
    """The first step at which the curve reaches `target`, by linear interpolation between eval points;
    None if it never does (no extrapolation past the last point)."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return float(iters[0])
            prev_it, prev_loss = iters[i - 1], losses[i - 1]
            return prev_it + (prev_loss - target) / (prev_loss - loss) * (iters[i] - prev_it)
    return None


def speedup(baseline_steps, model_steps):
    """baseline steps / model steps to the same loss; None if either never got there."""
    if baseline_steps is None or model_steps is None or model_steps <= 0:
        return None
    return baseline_steps / model_steps


def divergence(val_losses):
    """Why a run that finished counts as diverged, None if it does not: its final val loss is not finite, not below
    the initial one, or has climbed back from its best by more than RISE_FRACTION of what the run had gained."""
    first, final, best = val_losses[0], val_losses[-1], min(val_losses)
    if not math.isfinite(final):
        return f"final val loss {final}"
    if final >= first:
        return f"final val loss {final:.4f}, not below the initial {first:.4f}"
    if final - best > RISE_FRACTION * (first - best):
        return f"val loss rose from {best:.4f} back to {final:.4f} (initial {first:.4f})"
    return None


def near_best(losses):
    """The keys of `losses` (value -> final loss, None if diverged) within NEAR_BEST of the lowest loss."""
    finite = {v: loss for v, loss in losses.items() if loss is not None}
    if not finite:
        return []
    best = min(finite.values())
    return [v for v, loss in finite.items() if loss <= best * (1 + NEAR_BEST)]


def mean_curve(runs):
    """The eval curve averaged over seeds, on the eval steps all seeds share."""
    iters = sorted(set.intersection(*(set(r["iters"]) for r in runs)))
    pick = lambda r, field: [r[field][r["iters"].index(it)] for it in iters]
    losses = np.array([pick(r, "val_loss") for r in runs])  # (seeds, evals)
    return dict(iters=iters, tokens=pick(runs[0], "tokens"),
                time_s=np.mean([pick(r, "time_s") for r in runs], axis=0).tolist(),
                val_loss=losses.mean(0).tolist(), lo=losses.min(0).tolist(), hi=losses.max(0).tolist())


# -----------------------------------------------------------------------------
# Reading train.py runs

def read_run(folder):
    config, records, evals = read_run_log(folder)
    steps = [r for r in records if "ms_per_step" in r][1:]  # the first includes warm-up and compilation
    if not evals:
        raise ConfigError(f"{folder}/log.jsonl has no eval records yet")
    return dict(key=variant_of(config), seed=config["seed"], dir=str(folder), learning_rate=config["learning_rate"],
                iters=[r["iter"] for r in evals], tokens=[r["tokens"] for r in evals],
                time_s=[r["time_s"] for r in evals], val_loss=[r["val_loss"] for r in evals],
                final_val_loss=evals[-1]["val_loss"],
                ms_per_step=float(np.median([r["ms_per_step"] for r in steps])) if steps else None,
                tokens_per_s=float(np.median([r["tokens_per_s"] for r in steps])) if steps else None,
                config=config, **norms.run_fields(records, evals))


def find_runs(folders):
    """The runs in these folders (run folders, or folders holding them)."""
    try:
        return [read_run(f) for f in run_folders(folders)]
    except FileNotFoundError as e:
        raise ConfigError(str(e))


# -----------------------------------------------------------------------------
# Training, in this process through train.main

def has_option(argv, name):
    return any(a == name or a.startswith(name + "=") for a in argv)


def without(argv, name):
    """argv less the option `name` and its value, given as `name value` or `name=value`."""
    out, skip = [], False
    for a in argv:
        if not skip and a != name and not a.startswith(name + "="):
            out.append(a)
        skip = a == name
    return out


def run_argv(key, seed, out_dir, args, rest, iters=None, learning_rate=None):
    """The train.py command line of one run."""
    model, extra, _ = VARIANTS[key]
    argv = ["--model", model, *extra, "--seed", str(seed), "--out_dir", str(out_dir), *rest]
    iters = iters or args.iters
    if iters:
        argv += ["--max_iters", str(iters)]
    if learning_rate:
        argv += ["--learning_rate", repr(learning_rate)]
    if not has_option(rest, "--eval_interval"):
        max_iters = resolve_settings(argv)[0]["max_iters"]
        argv += ["--eval_interval", str(max(1, max_iters // EVALS_PER_RUN))]
    return argv


def check_same_settings(folder, s):
    """A run in `folder` is reused or resumed only if it was started with the same settings `s`."""
    saved = json.loads((folder / "config.json").read_text())
    # an option newer than the run has its default value there
    differ = [k for k, v in s.items() if k not in SYSTEM_KEYS and saved.get(k, DEFAULTS.get(k)) != v]
    if differ:
        raise ConfigError(f"{folder} holds a run with other settings ({', '.join(differ)}); "
                                f"delete it or use another --out_dir")


def train_run(argv, title):
    """Train one run, or reuse it if --out_dir already holds it complete; resume it if it was interrupted."""
    s = resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    if (folder / "config.json").exists():
        check_same_settings(folder, s)
        done = [r for r in read_log(folder / "log.jsonl") if "val_loss" in r and r["iter"] == s["max_iters"]]
        if done:
            print(f"=== {title}: reusing the complete run in {folder}")
            return dict(val_loss=done[-1]["val_loss"])
        argv = argv + ["--resume"]
    print(f"=== {title}: python train.py {shlex.join(argv)}")
    final = train.main(argv)
    if final.get("stopped"):
        print("compare.py: interrupted; run the same command again to go on from here")
        sys.exit(130)
    return final


def lr_sweep(keys, args, rest, out_dir):
    """{key: {lr: final val loss}} over LR_MULTIPLIERS x the recipe LR, seed 0, interleaved like the comparison."""
    losses = {key: {} for key in keys}
    total = len(keys) * len(LR_MULTIPLIERS)
    for i, mult in enumerate(LR_MULTIPLIERS):
        for j, key in enumerate(keys):
            lr = load_model_module(VARIANTS[key][0]).RECIPE["learning_rate"] * mult
            argv = run_argv(key, 0, out_dir / "sweep" / f"{key}-lr{lr:g}", args, rest,
                            iters=args.lr_sweep_iters, learning_rate=lr)
            try:
                losses[key][lr] = train_run(argv, f"LR sweep [{i * len(keys) + j + 1}/{total}] {label(key)} lr {lr:g}")["val_loss"]
            except train.TrainingError as e:  # diverged: the worst possible result, not a crash of the sweep
                print(f"{label(key)} at lr {lr:g} diverged: {e}")
                losses[key][lr] = math.inf
    return losses


def sweep_argv(key, seed, option, value, out_dir, args, rest):
    """The train.py command line of one run of --sweep OPTION=...: the value as given, except that a batch size
    keeps the token budget of max_iters steps at the preset's batch size: max_iters, and the eval and warmup steps
    with it, scaled by the preset's value / value."""
    extra = [f"--{option}", value]
    iters = None
    if option in TOKEN_BUDGET_OPTIONS:
        ref = resolve_settings(run_argv(key, seed, out_dir, args, rest))[0]
        scale = ref[option] / int(value)
        iters = max(1, round(ref["max_iters"] * scale))
        # eval_iters too, so that every point is evaluated on about as many validation sequences
        for name, least in (("eval_interval", 1), ("eval_iters", 1), ("warmup_iters", 0)):
            rest = without(rest, f"--{name}")
            extra += [f"--{name}", str(max(least, round(ref[name] * scale)))]
    folder = out_dir / "sweep" / f"{key}-{option}{value}-s{seed}"
    return run_argv(key, seed, folder, args, [*rest, *extra], iters=iters)


def sweep_point(argv, title):
    """Train one run of a sweep (or reuse it) and read it back, with why it diverged (None if it did not).
    A run that train.py stopped on a non-finite loss gets a diverged.txt, so that the same command skips it."""
    s = resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    marker = folder / "diverged.txt"
    if marker.exists():
        check_same_settings(folder, s)
        print(f"=== {title}: reusing the diverged run in {folder}")
        reason = marker.read_text().strip()
    else:
        try:
            train_run(argv, title)
            reason = None
        except train.TrainingError as e:  # a result of the sweep, not a crash of it
            reason = "train.py stopped: " + str(e).split(";")[0]
            print(f"{title}: diverged ({reason})")
            marker.write_text(reason + "\n")
    evals = {r["iter"]: r for r in read_log(folder / "log.jsonl") if "val_loss" in r}
    evals = [evals[it] for it in sorted(evals)]
    losses = [r["val_loss"] for r in evals]
    reason = reason or divergence(losses)
    losses = [loss if math.isfinite(loss) else None for loss in losses]  # json has no NaN or inf
    return dict(seed=s["seed"], dir=str(folder), iters=[r["iter"] for r in evals], val_loss=losses,
                final_val_loss=losses[-1] if evals[-1]["iter"] == s["max_iters"] else None, diverged=reason,
                config=json.loads((folder / "config.json").read_text()))


def sweep_runs(keys, option, values, args, rest, out_dir):
    """{key: {value: [run per seed]}}: one run per model, value and seed, interleaved like the comparison."""
    points = {key: {value: [] for value in values} for key in keys}
    n, total = 0, args.seeds * len(values) * len(keys)
    for seed in range(args.seeds):
        for value in values:
            for key in keys:
                n += 1
                argv = sweep_argv(key, seed, option, value, out_dir, args, rest)
                points[key][value].append(sweep_point(argv, f"[{n}/{total}] {label(key)} {option} {value} seed {seed}"))
    return points


def summarize_sweep(points):
    """{key: {value: aggregates over seeds}}: mean, std, min and max of the final val losses of the runs that did
    not diverge, and how many did; plus per model the best value and those near it."""
    models = {}
    for key, by_value in points.items():
        summary = {}
        for value, runs in by_value.items():
            finals = [r["final_val_loss"] for r in runs if not r["diverged"]]
            summary[value] = dict(
                seeds=[r["seed"] for r in runs], final_val_loss=[r["final_val_loss"] for r in runs],
                diverged=sum(bool(r["diverged"]) for r in runs),
                mean=float(np.mean(finals)) if finals else None,
                std=float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
                lo=min(finals) if finals else None, hi=max(finals) if finals else None)
        means = {value: v["mean"] for value, v in summary.items()}
        near = near_best(means)
        models[key] = dict(label=label(key), points=summary, near_best=near,
                           best=min(near, key=means.get) if near else None)
    return models


# -----------------------------------------------------------------------------
# Aggregates per model

def summarize(runs, baseline_arg, target_loss):
    """{key: aggregates} for every model in `runs`, with its baseline, target, steps to target and speedup."""
    keys = [k for k in VARIANTS if any(r["key"] == k for r in runs)]
    keys += sorted({r["key"] for r in runs} - set(keys))  # models this script does not know, by name
    by_key = {k: sorted((r for r in runs if r["key"] == k), key=lambda r: r["seed"]) for k in keys}
    models = {}
    for key in keys:
        finals = [r["final_val_loss"] for r in by_key[key]]
        ms = [r["ms_per_step"] for r in by_key[key] if r["ms_per_step"]]
        tps = [r["tokens_per_s"] for r in by_key[key] if r["tokens_per_s"]]
        models[key] = dict(label=label(key), seeds=[r["seed"] for r in by_key[key]],
                           learning_rate=sorted({r["learning_rate"] for r in by_key[key]}),
                           curve=mean_curve(by_key[key]), **norms.aggregates(by_key[key]),
                           final_val_loss_mean=float(np.mean(finals)),
                           final_val_loss_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
                           ms_per_step=float(np.mean(ms)) if ms else None,
                           tokens_per_s=float(np.mean(tps)) if tps else None)
    for key, m in models.items():
        base = baseline_arg or PAPER_BASELINES.get(key, "gpt")
        if base not in models:  # e.g. anGPT without GPT+QK-norm: fall back to GPT, or the first model
            base = "gpt" if "gpt" in models else keys[0]
        b = models[base]
        if target_loss is None:
            target = b["curve"]["val_loss"][-1]  # the baseline's final mean val loss
            base_steps = float(b["curve"]["iters"][-1])  # which the baseline reaches at its last step, by definition
        else:
            target = target_loss
            base_steps = steps_to_reach(b["curve"]["iters"], b["curve"]["val_loss"], target)
        steps = base_steps if key == base else steps_to_reach(m["curve"]["iters"], m["curve"]["val_loss"], target)
        ms_gpt = models.get("gpt", {}).get("ms_per_step")
        m.update(baseline=base, target_loss=target, baseline_steps=base_steps, steps_to_target=steps,
                 speedup=speedup(base_steps, steps),
                 ms_per_step_ratio_to_gpt=m["ms_per_step"] / ms_gpt if m["ms_per_step"] and ms_gpt else None)
    for key, m in models.items():
        # against every baseline, not only the paper's: a speedup over the weaker baseline alone would flatter
        m["vs_baselines"] = {}
        for base in (b for b in BASELINE_KEYS if b in models and b != key):
            b = models[base]["curve"]
            target, base_steps = b["val_loss"][-1], float(b["iters"][-1])
            steps = steps_to_reach(m["curve"]["iters"], m["curve"]["val_loss"], target)
            m["vs_baselines"][base] = dict(target_loss=target, steps_to_target=steps, speedup=speedup(base_steps, steps))
    return models


# -----------------------------------------------------------------------------
# Outputs

def save_with_legend_below(fig, handles, several, title, path, bottom=0.08):
    """One legend under the panels, where it cannot hide a curve, then the title, and the figure into path."""
    import matplotlib.pyplot as plt

    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               title="mean and min-max band over seeds" if several else None)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom + (0.04 if several else 0), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(models, path, log_x, title):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

    max_time = max(m["curve"]["time_s"][-1] for m in models.values())
    unit, per = ("s", 1) if max_time < 300 else ("min", 60) if max_time < 3 * 3600 else ("h", 3600)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), sharey=True)
    panels = [("iters", 1, "optimizer steps"), ("tokens", 1, "training tokens"), ("time_s", per, f"training time ({unit}, evals excluded)")]
    for ax, (field, scale, xlabel) in zip(axes, panels):
        for key, m in models.items():
            c = m["curve"]
            x = np.array(c[field], dtype=float) / scale
            keep = x > 0 if log_x else np.full(len(x), True)  # step 0 has no place on a log axis
            color = COLORS.get(key)
            ax.plot(x[keep], np.array(c["val_loss"])[keep], color=color, lw=2, label=m["label"])
            if len(m["seeds"]) > 1:
                ax.fill_between(x[keep], np.array(c["lo"])[keep], np.array(c["hi"])[keep], color=color, alpha=0.2, lw=0)
            if field == "iters" and m["steps_to_target"] is not None:  # where it reaches its target
                ax.plot(m["steps_to_target"], m["target_loss"], "o", color=color, ms=7, mec="white", zorder=5)
        for target, base in sorted({(m["target_loss"], m["baseline"]) for m in models.values()}):
            ax.axhline(target, color=COLORS.get(base, "gray"), ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_title(f"val loss vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 10, 20, 50, 100: enough labels for a short range
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(EngFormatter(sep="") if field == "tokens" else FuncFormatter(lambda v, _: f"{v:g}"))
    # the y-range: the initial loss (~4.2 on characters) would squash the part where the models differ, so the
    # top is the highest mean loss after the first 10% of the run (5% on a log axis, which shows early steps)
    early = 0.05 if log_x else 0.1
    top = max(loss for m in models.values() for it, loss in zip(m["curve"]["iters"], m["curve"]["val_loss"])
              if it >= early * m["curve"]["iters"][-1])
    bottom = min(min(m["curve"]["lo"]) for m in models.values())
    pad = 0.05 * (top - bottom) or 0.05
    axes[0].set_ylim(bottom - pad, top + pad)
    axes[0].set_ylabel("validation loss")
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", ls=":", label="target: a baseline's final loss"),
                Line2D([], [], color="gray", marker="o", ls="", mec="white", label="step it is reached")]
    save_with_legend_below(fig, handles, any(len(m["seeds"]) > 1 for m in models.values()), title, path)


SHOWN_SETTINGS = ("preset", "dataset", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                  "gradient_accumulation_steps", "tokens_per_iter", "max_iters", "eval_interval", "eval_iters",
                  "warmup_iters", "weight_decay", "beta2", "eps", "grad_clip", "num_params", "device", "dtype",
                  "world_size")


def settings_of(runs, models):
    """{setting: value if all runs agree, else {model key: value}}."""
    out = {}
    for name in SHOWN_SETTINGS:
        values = {r["key"]: r["config"].get(name) for r in runs}
        out[name] = values.popitem()[1] if len({json.dumps(v) for v in values.values()}) == 1 else \
            {k: values[k] for k in models}
    return out


def fmt(value, spec, none="-", suffix=""):
    return none if value is None else format(value, spec) + suffix


def markdown(models, settings, lr_sweep_losses, command):
    lines = ["# Convergence: " + ", ".join(m["label"] for m in models.values()), "",
             "| model | LR | final val loss | target (baseline) | steps to target | speedup | ms/step | vs GPT | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, m in models.items():
        std = f" ± {m['final_val_loss_std']:.4f}" if m["final_val_loss_std"] is not None else ""
        lrs = ", ".join(f"{lr:.3g}" for lr in m["learning_rate"])
        lines.append(f"| {m['label']} | {lrs} | {m['final_val_loss_mean']:.4f}{std} | "
                     f"{m['target_loss']:.4f} ({models[m['baseline']]['label']}) | "
                     f"{fmt(m['steps_to_target'], '.0f', 'not reached')} | {fmt(m['speedup'], '.2f', suffix='x')} | "
                     f"{fmt(m['ms_per_step'], '.1f')} | {fmt(m['ms_per_step_ratio_to_gpt'], '.2f', suffix='x')} | "
                     f"{fmt(m['tokens_per_s'], ',.0f')} |")
    n_seeds = max(len(m["seeds"]) for m in models.values())
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    lines += ["", f"Final val loss: {spread}. Steps to target: the first step at which the "
              "model's mean eval curve reaches the target (its baseline's final mean val loss unless --target-loss "
              "is given), by linear interpolation between evaluations; a baseline reaches its own final loss at its "
              "last step. Speedup: baseline steps / model steps. ms/step: median over the run's step records (the "
              "first left out: warm-up), mean over seeds; runs interleaved in one process.", ""]
    baselines = [b for b in BASELINE_KEYS if b in models]
    if len(baselines) > 1:
        lines += ["## Against each baseline", "", "| model | " + " | ".join(
            f"{models[b]['label']} ({models[b]['curve']['val_loss'][-1]:.4f})" for b in baselines) + " |",
            "|---|" + "---|" * len(baselines)]
        for key, m in models.items():
            cells = [m["vs_baselines"].get(b) for b in baselines]
            lines.append(f"| {m['label']} | " + " | ".join(
                "-" if c is None else "not reached" if c["steps_to_target"] is None else
                f"{c['steps_to_target']:.0f} steps, {c['speedup']:.2f}x" for c in cells) + " |")
        lines += ["", "Steps to each baseline's final mean val loss, and the speedup over it (the baseline's steps "
                  "over the model's).", ""]
    if lr_sweep_losses:
        lines += ["## Learning-rate sweep (seed 0, final val loss)", "", "| model | " + " | ".join(
            f"x{mult:g}" for mult in LR_MULTIPLIERS) + " | best LR |", "|---|" + "---|" * (len(LR_MULTIPLIERS) + 1)]
        for key, losses in lr_sweep_losses.items():
            best = min(losses, key=losses.get)
            edge = " (grid edge)" if best in (min(losses), max(losses)) else ""
            lines.append(f"| {label(key)} | " + " | ".join(f"{lr:.3g}: {loss:.4f}" for lr, loss in losses.items())
                         + f" | {best:.3g}{edge} |")
        lines += ["", "A best LR at the grid edge means a wider grid may find a better one.", ""]
    lines += norms.markdown(models)
    lines += ["## Settings", ""]
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{label(k)} {v}" for k, v in value.items())
        lines.append(f"- {name}: {value}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def mean_std(d):
    """'1.2345 ± 0.0123' from {mean, std}; the mean alone where there is one value."""
    return f"{d['mean']:.4f}" + (f" ± {d['std']:.4f}" if d["std"] is not None else "")


def is_number(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def mark_at_top(ax, xs, row, color):
    """Crosses at the top of the panel for points that have no loss to show (diverged, refused), one row per model
    so that none hides another; x in data units, y in the panel's."""
    if not xs:  # an empty line that may draw outside the panel would still take room in the layout
        return
    ax.plot(xs, [0.97 - 0.035 * row] * len(xs), "x", color=color, ms=9, mew=2, ls="",
            transform=ax.get_xaxis_transform(), clip_on=False)


def room_at_top(ax, rows):
    """Raise the top of the y-range so that the curves stay below the rows of crosses of mark_at_top."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, bottom + (top - bottom) / (0.95 - 0.035 * rows))


def plot_sweep(option, models, path, log_x, title):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator

    values = list(next(iter(models.values()))["points"])
    numeric = all(is_number(v) for v in values)
    x_of = {v: float(v) if numeric else i for i, v in enumerate(values)}  # words (rope=...) sit side by side
    fig, ax = plt.subplots(figsize=(9, 6))
    for row, (key, m) in enumerate(models.items()):
        color, points = COLORS.get(key), m["points"]
        done = [v for v in values if points[v]["mean"] is not None]
        x = [x_of[v] for v in done]
        ax.plot(x, [points[v]["mean"] for v in done], "o-", color=color, lw=2, label=m["label"])
        if any(len(points[v]["seeds"]) > 1 for v in done):
            ax.fill_between(x, [points[v]["lo"] for v in done], [points[v]["hi"] for v in done], color=color,
                            alpha=0.2, lw=0)
        mark_at_top(ax, [x_of[v] for v in values if points[v]["diverged"]], row, color)
    if any(p["diverged"] for m in models.values() for p in m["points"].values()):
        room_at_top(ax, len(models))
    if log_x or (numeric and option in LOG_X_OPTIONS and min(x_of.values()) > 0):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([x_of[v] for v in values], values)  # the values as given on the command line
    ax.set_xlabel(option)
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any(p["diverged"] for m in models.values() for p in m["points"].values()):
        handles.append(Line2D([], [], color="gray", marker="x", ls="", mew=2, label="diverged (at the top)"))
    several = any(len(p["seeds"]) > 1 for m in models.values() for p in m["points"].values())
    # a long title (a token budget, many settings) on two lines
    save_with_legend_below(fig, handles, several, textwrap.fill(title, 90), path, bottom=0.06)


def sweep_settings(points, option):
    """{setting: its value if all runs agree, else {who: value} by swept value or by model}."""
    runs = [(key, value, r["config"]) for key, by_value in points.items() for value, rs in by_value.items() for r in rs]
    out = {}
    for name in ("learning_rate", *SHOWN_SETTINGS):
        if name == option:
            continue
        seen = lambda pick: {who: {json.dumps(c.get(name)) for k, v, c in runs if pick(k, v) == who}
                             for who in dict.fromkeys(pick(k, v) for k, v, _ in runs)}
        by_value, by_model = seen(lambda k, v: f"{option} {v}"), seen(lambda k, v: label(k))
        for groups in ({"all": set().union(*by_value.values())}, by_value, by_model,
                       seen(lambda k, v: f"{label(k)} at {v}")):
            if all(len(values) == 1 for values in groups.values()):
                one = {who: json.loads(values.pop()) for who, values in groups.items()}
                out[name] = one["all"] if "all" in one else one
                break
        else:
            out[name] = "differs per run (results.json)"
    return out


def sweep_markdown(option, models, budget, settings, diverged_runs, command):
    values = list(next(iter(models.values()))["points"])
    n_seeds = max(len(p["seeds"]) for m in models.values() for p in m["points"].values())
    lines = [f"# Sweep of {option}: " + ", ".join(m["label"] for m in models.values()), "",
             f"| {option} | " + " | ".join(m["label"] for m in models.values()) + " |", "|---|" + "---|" * len(models)]
    for value in values:
        cells = []
        for m in models.values():
            point = m["points"][value]
            if point["mean"] is None:
                cell = "diverged"
            else:
                cell = mean_std(point)
                cell += f" ({point['diverged']} of {len(point['seeds'])} diverged)" if point["diverged"] else ""
            cells.append(f"**{cell}**" if value == m["best"] else cell)
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    lines.append(f"| within {NEAR_BEST:.0%} of the best | "
                 + " | ".join(", ".join(m["near_best"]) or "-" for m in models.values()) + " |")
    spread = f"mean ± std over {n_seeds} seeds of the runs that did not diverge" if n_seeds > 1 else "one seed"
    lines += ["", f"Final val loss: {spread}; bold: the model's best {option}. Within {NEAR_BEST:.0%} of the "
              f"best: the values of {option} whose final loss is at most {NEAR_BEST:.0%} above the model's best, the "
              "range it tolerates. Diverged: train.py stopped the run on a non-finite loss or gradient, or its final "
              f"val loss is not below its initial one, or it climbed back more than {RISE_FRACTION:.0%} of what the "
              "run had gained. Every model runs at each value, the runs interleaved in one process.", ""]
    if budget:
        lines += [f"Fixed token budget: every run sees {budget['tokens']:,} training tokens, as many as "
                  f"{budget['max_iters']} steps at the preset's {option} {budget['reference']}: max_iters x {option} "
                  f"is fixed, and eval_interval, eval_iters and warmup_iters are scaled like max_iters. The learning "
                  f"rate is not.", ""]
    if diverged_runs:
        lines += ["## Diverged runs", ""] + [f"- {label(key)}, {option} {value}, seed {r['seed']}: {r['diverged']}"
                                             for key, value, r in diverged_runs] + [""]
    lines += ["## Settings", ""]
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{who}: {v}" for who, v in value.items())
        lines.append(f"- {name}: {value}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# The command line

def training_keys(p, args, rest, out_dir):
    """The models to train, once the command line is known to be good: bad options fail now, not after an hour."""
    for option, instead in OWN_OPTIONS.items():
        if has_option(rest, option):
            p.error(f"{option} is set by compare.py; use {instead}")
    available = [k for k in VARIANTS if VARIANTS[k][0] in MODELS]
    default = NORMS_KEYS if getattr(args, "norms", False) else DEFAULT_KEYS
    keys = args.models.split(",") if args.models else [k for k in default if k in available]
    for key in keys:
        if key not in available:
            p.error(f"--models: {key!r} is not one of {', '.join(available)}")
    for key in keys:
        resolve_settings(run_argv(key, 0, out_dir, args, rest))
    return keys


def sweep_command(p, args, rest, out_dir, command):
    """--sweep OPTION=V1,V2,...: train, then sweep.png, results.md and results.json."""
    for given, name in ((args.runs, "--runs"), (args.lr_sweep, "--lr-sweep"), (args.baseline, "--baseline"),
                        (args.target_loss is not None, "--target-loss")):
        if given:
            p.error(f"{name} has no effect with --sweep")
    option, _, text = args.sweep.removeprefix("--").partition("=")
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not option or not values:
        p.error(f"--sweep {args.sweep}: expected OPTION=V1,V2,..., e.g. --sweep learning_rate=1e-3,2e-3,4e-3")
    if f"--{option}" in OWN_OPTIONS:
        p.error(f"--sweep {option}: --{option} is set by compare.py; use {OWN_OPTIONS[f'--{option}']}")
    known = [o for action in build_parser()._actions for o in action.option_strings]
    if f"--{option}" not in known:
        close = difflib.get_close_matches(f"--{option}", known, n=1)
        p.error(f"--sweep {option}: not an option of train.py" + (f" (did you mean {close[0][2:]}?)" if close else ""))
    if has_option(rest, f"--{option}"):
        p.error(f"--{option} and --sweep {option}: choose one")
    if option in TOKEN_BUDGET_OPTIONS and not all(v.isdigit() and int(v) > 0 for v in values):
        p.error(f"--sweep {option}: the values must be positive integers, got {','.join(values)}")
    if all(is_number(v) for v in values):
        values.sort(key=float)
    keys = training_keys(p, args, rest, out_dir)
    for key in keys:  # every value of the sweep, before any training
        for value in values:
            resolve_settings(sweep_argv(key, 0, option, value, out_dir, args, rest))
    ref = resolve_settings(run_argv(keys[0], 0, out_dir, args, rest))[0]
    budget = dict(reference=ref[option], max_iters=ref["max_iters"], tokens=ref["max_iters"] * ref["batch_size"]
                  * ref["gradient_accumulation_steps"] * ref["block_size"]) if option in TOKEN_BUDGET_OPTIONS else None

    points = sweep_runs(keys, option, values, args, rest, out_dir)
    models = summarize_sweep(points)
    settings = sweep_settings(points, option)
    runs = [(key, value, r) for key, by_value in points.items() for value, rs in by_value.items() for r in rs]
    length = (f"{budget['tokens']:,} tokens per run (max_iters x {option} fixed)" if budget else
              f"{settings['max_iters']} steps" if not isinstance(settings["max_iters"], dict) else "steps per run vary")
    title = (f"Final val loss against {option}. {settings['preset']} preset: {settings['dataset']}, "
             f"{settings['n_layer']} layers, width {settings['n_embd']}, {length}, "
             f"{args.seeds} seed{'s' * (args.seeds > 1)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_sweep(option, models, out_dir / "sweep.png", args.log_x, title)
    table = sweep_markdown(option, models, budget, settings, [run for run in runs if run[2]["diverged"]], command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, option=option, values=values, token_budget=budget, settings=settings,
                   models=models, runs=[dict(key=key, value=value, **{k: v for k, v in r.items() if k != "config"})
                                        for key, value, r in runs])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:5 + len(values)]))  # the table
    print(f"wrote {out_dir / 'sweep.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


def context_argv(key, seed, context, tokens_per_step, out_dir, args, rest):
    """The train.py command line of one run of --contexts: this context, and as many sequences per step as make
    tokens_per_step, so that every context sees the same tokens per step and, with --eval_iters fixed, evaluates
    the same number of tokens (fewer, longer windows)."""
    extra = ["--block_size", str(context), "--batch_size", str(tokens_per_step // context),
             "--gradient_accumulation_steps", "1"]
    return run_argv(key, seed, out_dir / "runs" / f"{key}-T{context}-s{seed}", args, [*rest, *extra])


def context_command(p, args, rest, out_dir, command):
    """--contexts T1,T2,...: every model at every context with the same tokens per step; per context the final
    losses, steps to target and speedups (summarize), then contexts.png, results.md and results.json."""
    for given, name in ((args.runs, "--runs"), (args.lr_sweep, "--lr-sweep"), (args.norms, "--norms")):
        if given:
            p.error(f"{name} has no effect with --contexts")
    for option in ("--block_size", "--batch_size", "--gradient_accumulation_steps"):
        if has_option(rest, option):
            p.error(f"{option} is set by --contexts and --tokens-per-step")
    try:
        contexts = sorted({int(c) for c in args.contexts.split(",")})
    except ValueError:
        contexts = []
    if not contexts or contexts[0] < 1 or any(args.tokens_per_step % c for c in contexts):
        p.error(f"--contexts {args.contexts}: expected context lengths that divide --tokens-per-step "
                f"{args.tokens_per_step}, such as 64,256,1024")
    keys = training_keys(p, args, rest, out_dir)
    for key in keys:  # every run's settings, before any training
        for context in contexts:
            resolve_settings(context_argv(key, 0, context, args.tokens_per_step, out_dir, args, rest))
    runs, n, total = {c: [] for c in contexts}, 0, args.seeds * len(contexts) * len(keys)
    for seed in range(args.seeds):
        for context in contexts:
            for key in keys:
                n += 1
                argv = context_argv(key, seed, context, args.tokens_per_step, out_dir, args, rest)
                train_run(argv, f"[{n}/{total}] {label(key)} context {context} seed {seed}")
                runs[context].append(read_run(resolve_settings(argv)[0]["out_dir"]))
    by_context = {c: summarize(runs[c], args.baseline, args.target_loss) for c in contexts}
    settings = settings_of(runs[contexts[0]], by_context[contexts[0]])
    n_seeds = max(len(m["seeds"]) for m in by_context[contexts[0]].values())
    title = (f"Speedup against context length, the same {args.tokens_per_step} tokens per step at every context. "
             f"{settings['preset']} preset: {settings['dataset']}, {settings['n_layer']} layers, width "
             f"{settings['n_embd']}, {settings['max_iters']} steps, {n_seeds} seed{'s' * (n_seeds > 1)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_contexts(by_context, out_dir / "contexts.png", title)
    table = context_markdown(by_context, args.tokens_per_step, settings, command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, contexts=contexts, tokens_per_step=args.tokens_per_step, settings=settings,
                   models={c: models for c, models in by_context.items()},
                   runs=[{k: v for k, v in r.items() if k != "config"} for c in contexts for r in runs[c]])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:4 + len(keys)]))
    print(f"wrote {out_dir / 'contexts.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


def plot_contexts(by_context, path, title):
    """Each model's speedup over its baseline against the context, log x, with the nGPT paper's points."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    contexts = list(by_context)
    fig, ax = plt.subplots(figsize=(9, 5.6))
    for key, m in by_context[contexts[0]].items():
        if m["baseline"] == key:
            continue  # a baseline's speedup over itself is 1 by definition
        speedups = [by_context[c][key]["speedup"] for c in contexts]
        # a context where the baseline's loss is not reached has no speedup: the line breaks there (NaN)
        ax.plot(contexts, [math.nan if v is None else v for v in speedups], "o-", color=COLORS.get(key), lw=2,
                label=f"{m['label']} vs {by_context[contexts[0]][m['baseline']]['label']}")
        mark_at_top(ax, [c for c, v in zip(contexts, speedups) if v is None], 0, COLORS.get(key))
    paper = sorted(PAPER_CONTEXT_SPEEDUPS.items())
    ax.plot(*zip(*paper), "s--", color="gray", lw=1.5, label="nGPT vs GPT, nGPT paper (0.5-1B parameters, OpenWebText)")
    ax.axhline(1, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = sorted(set(contexts) | set(PAPER_CONTEXT_SPEEDUPS))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("speedup: baseline steps / model steps to the baseline's final loss")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="gray", marker="x", ls="", mew=2, label="baseline's loss not reached (at the top)"))
    ax.legend(handles=handles, frameon=False, fontsize=9)
    ax.set_title(textwrap.fill(title, 100), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def context_markdown(by_context, tokens_per_step, settings, command):
    contexts = list(by_context)
    first = by_context[contexts[0]]
    lines = ["# Speedup against context length: " + ", ".join(m["label"] for m in first.values()), "",
             "| model (baseline) | " + " | ".join(f"context {c} (batch {tokens_per_step // c})" for c in contexts) + " |",
             "|---|" + "---|" * len(contexts)]
    for key, m in first.items():
        cells = []
        for c in contexts:
            mc = by_context[c][key]
            reached = (f"{mc['steps_to_target']:.0f} steps to {mc['target_loss']:.4f}, {mc['speedup']:.2f}x"
                       if mc["steps_to_target"] is not None else f"{mc['target_loss']:.4f} not reached")
            cells.append(f"{mc['final_val_loss_mean']:.4f}; {reached}")
        lines.append(f"| {m['label']} ({first[m['baseline']]['label']}) | " + " | ".join(cells) + " |")
    paper = ", ".join(f"{s}x at {c}" for c, s in sorted(PAPER_CONTEXT_SPEEDUPS.items()))
    lines += ["", f"Each cell: the final val loss; the steps to the baseline's final val loss at that context, and "
              f"the speedup (the baseline's steps over the model's). Every context trains on {tokens_per_step} tokens "
              f"per step for the same number of steps, so on the same tokens, and evaluates the same number of "
              f"tokens. The nGPT paper's nGPT over GPT: {paper} (0.5B and 1B parameters, OpenWebText).", "",
              "## Settings", ""]
    for name, value in settings.items():
        if name not in ("block_size", "batch_size"):  # by context: in the table's header
            shown = ", ".join(f"{label(k)} {v}" for k, v in value.items()) if isinstance(value, dict) else value
            lines.append(f"- {name}: {shown}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def read_runs(p, args, rest):
    """--runs DIR ...: the runs found there, of --models only if given; (runs, no LR sweep)."""
    if rest:
        p.error(f"{' '.join(rest)}: train.py options have no effect with --runs")
    runs = find_runs(args.runs)
    if args.models:
        runs = [r for r in runs if r["key"] in args.models.split(",")]
    return runs, None


def train_runs(p, args, rest, out_dir):
    """Train (or reuse) every model's runs, seed by seed, after the LR sweep if asked; (runs, the sweep's losses)."""
    if args.lr_sweep and has_option(rest, "--learning_rate"):
        p.error("--learning_rate and --lr-sweep: choose one")
    keys = training_keys(p, args, rest, out_dir)
    lr_sweep_losses, lrs = None, {}
    if args.lr_sweep:
        lr_sweep_losses = lr_sweep(keys, args, rest, out_dir)
        lrs = {key: min(losses, key=losses.get) for key, losses in lr_sweep_losses.items()}
        print("learning rates from the sweep: " + ", ".join(f"{label(k)} {lr:g}" for k, lr in lrs.items()))
    folders, total = [], args.seeds * len(keys)
    for seed in range(args.seeds):  # interleaved: machine noise hits every model alike
        for key in keys:
            folder = out_dir / "runs" / f"{key}-s{seed}"
            train_run(run_argv(key, seed, folder, args, rest, learning_rate=lrs.get(key)),
                      f"[{len(folders) + 1}/{total}] {label(key)} seed {seed}")
            folders.append(folder)
    return [read_run(f) for f in folders], lr_sweep_losses


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # train.py's parser class: errors as one line; no abbreviations, so that train.py's --seed is not our --seeds
    p = Parser(prog="compare.py", description=__doc__.split("\n\n")[0].strip(),
                     epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma-separated, of {','.join(VARIANTS)} (default: all whose model file exists)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model, 0..N-1 (default: 3)")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    p.add_argument("--out_dir", default="compare_out", help="default: compare_out")
    p.add_argument("--runs", nargs="+", default=None, help="plot and tabulate these train.py runs instead of training")
    p.add_argument("--baseline", default=None, help="one baseline for all models (default: the papers', see below)")
    p.add_argument("--target-loss", "--target_loss", type=float, default=None,
                   help="one target val loss for all models (default: each baseline's final val loss)")
    p.add_argument("--lr-sweep", "--lr_sweep", action="store_true",
                   help=f"first pick each model's LR from recipe LR x {', '.join(map(str, LR_MULTIPLIERS))}")
    p.add_argument("--lr-sweep-iters", "--lr_sweep_iters", type=int, default=None,
                   help="steps per sweep run (default: --iters)")
    p.add_argument("--log-x", "--log_x", action="store_true", help="log-scaled x axes")
    p.add_argument("--norms", action="store_true",
                   help=f"norm growth and saturation: train {', '.join(NORMS_KEYS)} (default models: {', '.join(DEFAULT_KEYS)})")
    p.add_argument("--sweep", default=None, metavar="OPTION=V1,V2,...",
                   help="one run per model, value and seed of any train.py option; batch sizes at a fixed token budget")
    p.add_argument("--contexts", default=None, metavar="T1,T2,...",
                   help="every model at these context lengths, with the same tokens per step: the speedup by context")
    p.add_argument("--tokens-per-step", "--tokens_per_step", type=int, default=TOKENS_PER_STEP,
                   help=f"with --contexts: tokens per step at every context (default: {TOKENS_PER_STEP})")
    args, rest = p.parse_known_args(argv)  # the rest goes to train.py, e.g. --preset gpu --n_layer 6
    out_dir = Path(args.out_dir)
    command = "python compare.py " + shlex.join(argv)
    if args.norms and args.sweep:
        p.error("--norms has no effect with --sweep")
    if args.sweep and args.contexts:
        p.error("--sweep and --contexts: one at a time")
    if args.contexts:
        return context_command(p, args, rest, out_dir, command)
    if args.sweep:
        return sweep_command(p, args, rest, out_dir, command)

    runs, lr_sweep_losses = read_runs(p, args, rest) if args.runs else train_runs(p, args, rest, out_dir)
    if not runs:
        raise ConfigError("no runs to compare")
    if args.baseline and args.baseline not in {r["key"] for r in runs}:
        p.error(f"--baseline {args.baseline}: no runs of it (have: {', '.join(sorted({r['key'] for r in runs}))})")

    models = summarize(runs, args.baseline, args.target_loss)
    settings = settings_of(runs, models)
    n_seeds = max(len(m["seeds"]) for m in models.values())
    title = (f"Validation loss. {settings['preset']} preset: {settings['dataset']}, {settings['n_layer']} layers, "
             f"width {settings['n_embd']}, {settings['tokens_per_iter']} tokens/step, "
             f"{max(m['curve']['iters'][-1] for m in models.values())} steps, {n_seeds} seed{'s' * (n_seeds > 1)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(models, out_dir / "convergence.png", args.log_x, title)
    written = [out_dir / "convergence.png"]
    written += norms.plot_all(models, out_dir, title.replace("Validation loss. ", ""))
    table = markdown(models, settings, lr_sweep_losses, command)
    (out_dir / "results.md").write_text(table)
    sweep = {k: dict(best=min(v, key=v.get), final_val_loss={repr(lr): loss if math.isfinite(loss) else None
                                                             for lr, loss in v.items()})
             for k, v in (lr_sweep_losses or {}).items()}
    results = dict(command=command, settings=settings, target_loss_option=args.target_loss,
                   baseline_option=args.baseline, lr_sweep=sweep or None, models=models,
                   runs=[{k: v for k, v in r.items() if k != "config"} for r in runs])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:4 + len(models)]))  # the table
    if sweep:
        print("learning rates from the sweep: " + ", ".join(f"{label(k)} {v['best']:g}" for k, v in sweep.items()))
    print("wrote " + ", ".join(map(str, [*written, out_dir / "results.md", out_dir / "results.json"])))
    return results


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, train.prepare_data.DataError) as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.TrainingError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(1)
