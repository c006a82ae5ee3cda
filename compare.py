"""
How much faster do nGPT and anGPT converge than GPT, and at what cost per step? Trains every model with train.py
on the same data, token budget and evaluation schedule, each with its own paper recipe and learning rate, then
plots the validation loss and writes a table of steps-to-target, speedups and step times.

All models that exist (GPT, GPT+QK-norm, nGPT, anGPT), 3 seeds each, on train.py's default preset (cpu without
a GPU: 2000 steps, about 40 minutes on two cores; 20 evaluations per run unless --eval_interval is given):
$ python compare.py

Fewer seeds, fewer steps, some models; any other option goes to train.py unchanged:
$ python compare.py --seeds 1 --iters 300 --models gpt,ngpt --n_layer 2

Tune each model's learning rate first (recipe LR x 0.25, 0.5, 1, 2, 4 on one seed), then compare at the best:
$ python compare.py --lr-sweep --lr-sweep-iters 500

Plot and tabulate runs made elsewhere, e.g. a multi-hour GPU run (folders of train.py runs, or folders of them):
$ python compare.py --runs out/gpu/gpt out/gpu/ngpt --out_dir compare_gpu --log-x

Baselines follow the papers: nGPT against GPT (nGPT paper), anGPT against GPT+QK-norm (anGPT paper), GPT+QK-norm
against GPT. The target of a model is its baseline's final validation loss (mean over seeds); its steps to target
are read off its own mean eval curve by linear interpolation, and speedup = baseline steps / model steps.
`--baseline KEY` uses one baseline for all models, `--target-loss X` one target loss for all.

The runs are interleaved (seed 0: gpt, gpt_qk, ngpt, angpt; seed 1: ...) so that whatever else the machine does
slows all models alike. A run that is already complete in --out_dir with the same settings is reused, and an
interrupted one (Ctrl-C) is resumed: run the same command again to go on.

Writes into --out_dir (default compare_out/):
  convergence.png   val loss against steps, tokens and training time (mean over seeds, min-max band)
  results.md        the table, the settings and the command line
  results.json      per run the eval curve, final loss and median ms/step; per model the aggregates, the target
                    and the baseline used: everything needed to recompute the table
  runs/<key>-s<seed>/, sweep/<key>-lr<lr>/   the train.py runs
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np

import train

# -----------------------------------------------------------------------------
# The models compared: key -> (model file, extra train.py options, name in the plot and the table)
VARIANTS = {
    "gpt": ("gpt", [], "GPT"),
    "gpt_qk": ("gpt", ["--qk_norm", "true"], "GPT+QK-norm"),
    "ngpt": ("ngpt", [], "nGPT"),
    "angpt": ("angpt", [], "anGPT"),
}
PAPER_BASELINES = {"gpt": "gpt", "gpt_qk": "gpt", "ngpt": "gpt", "angpt": "gpt_qk"}
COLORS = {"gpt": "#333333", "gpt_qk": "#1f77b4", "ngpt": "#2ca02c", "angpt": "#d62728"}  # baseline in gray
LR_MULTIPLIERS = (0.25, 0.5, 1, 2, 4)  # --lr-sweep: the grid around each model's recipe LR
EVALS_PER_RUN = 20  # unless --eval_interval is given: steps-to-target interpolates between close points
# options compare.py sets itself for every run, with what to use instead
OWN_OPTIONS = {"--model": "--models", "--seed": "--seeds", "--out_dir": "compare.py's --out_dir",
               "--max_iters": "--iters", "--resume": "the same command again"}


def label(key):
    return VARIANTS[key][2] if key in VARIANTS else key


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
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    records = train.read_log(folder / "log.jsonl")
    evals = {r["iter"]: r for r in records if "val_loss" in r}  # by step: a resumed run may repeat one
    evals = [evals[it] for it in sorted(evals)]
    steps = [r for r in records if "ms_per_step" in r][1:]  # the first includes warm-up and compilation
    if not evals:
        raise train.ConfigError(f"{folder}/log.jsonl has no eval records yet")
    key = config["model"] + ("_qk" if config.get("qk_norm") else "")
    return dict(key=key, seed=config["seed"], dir=str(folder), learning_rate=config["learning_rate"],
                iters=[r["iter"] for r in evals], tokens=[r["tokens"] for r in evals],
                time_s=[r["time_s"] for r in evals], val_loss=[r["val_loss"] for r in evals],
                final_val_loss=evals[-1]["val_loss"],
                ms_per_step=float(np.median([r["ms_per_step"] for r in steps])) if steps else None,
                tokens_per_s=float(np.median([r["tokens_per_s"] for r in steps])) if steps else None,
                config=config)


def find_runs(folders):
    """Run folders (with a log.jsonl), or folders holding run folders, such as compare.py's runs/."""
    found = []
    for folder in map(Path, folders):
        if (folder / "log.jsonl").exists():
            found.append(folder)
        else:
            found += sorted(p.parent for p in folder.glob("*/log.jsonl"))
            if not any(folder.glob("*/log.jsonl")):
                raise train.ConfigError(f"--runs {folder}: no log.jsonl in it or in its subfolders")
    return [read_run(f) for f in found]


# -----------------------------------------------------------------------------
# Training, in this process through train.main

def has_option(argv, name):
    return any(a == name or a.startswith(name + "=") for a in argv)


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
        max_iters = train.resolve_settings(argv)[0]["max_iters"]
        argv += ["--eval_interval", str(max(1, max_iters // EVALS_PER_RUN))]
    return argv


def train_run(argv, title):
    """Train one run, or reuse it if --out_dir already holds it complete; resume it if it was interrupted."""
    s = train.resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    if (folder / "config.json").exists():
        saved = json.loads((folder / "config.json").read_text())
        differ = [k for k, v in s.items() if k not in train.SYSTEM_KEYS and saved.get(k) != v]
        if differ:
            raise train.ConfigError(f"{folder} holds a run with other settings ({', '.join(differ)}); "
                                    f"delete it or use another --out_dir")
        done = [r for r in train.read_log(folder / "log.jsonl") if "val_loss" in r and r["iter"] == s["max_iters"]]
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
            lr = train.load_model_module(VARIANTS[key][0]).RECIPE["learning_rate"] * mult
            argv = run_argv(key, 0, out_dir / "sweep" / f"{key}-lr{lr:g}", args, rest,
                            iters=args.lr_sweep_iters, learning_rate=lr)
            try:
                losses[key][lr] = train_run(argv, f"LR sweep [{i * len(keys) + j + 1}/{total}] {label(key)} lr {lr:g}")["val_loss"]
            except train.TrainingError as e:  # diverged: the worst possible result, not a crash of the sweep
                print(f"{label(key)} at lr {lr:g} diverged: {e}")
                losses[key][lr] = math.inf
    return losses


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
                           curve=mean_curve(by_key[key]), final_val_loss_mean=float(np.mean(finals)),
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
    return models


# -----------------------------------------------------------------------------
# Outputs

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
    several = any(len(m["seeds"]) > 1 for m in models.values())
    # one legend under the panels, where it cannot hide a curve
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               title="mean and min-max band over seeds" if several else None)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 if several else 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


SHOWN_SETTINGS = ("preset", "dataset", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                  "gradient_accumulation_steps", "tokens_per_iter", "max_iters", "eval_interval", "eval_iters",
                  "warmup_iters", "weight_decay", "grad_clip", "num_params", "device", "dtype", "world_size")


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
    if lr_sweep_losses:
        lines += ["## Learning-rate sweep (seed 0, final val loss)", "", "| model | " + " | ".join(
            f"x{mult:g}" for mult in LR_MULTIPLIERS) + " | best LR |", "|---|" + "---|" * (len(LR_MULTIPLIERS) + 1)]
        for key, losses in lr_sweep_losses.items():
            best = min(losses, key=losses.get)
            edge = " (grid edge)" if best in (min(losses), max(losses)) else ""
            lines.append(f"| {label(key)} | " + " | ".join(f"{lr:.3g}: {loss:.4f}" for lr, loss in losses.items())
                         + f" | {best:.3g}{edge} |")
        lines += ["", "A best LR at the grid edge means a wider grid may find a better one.", ""]
    lines += ["## Settings", ""]
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{label(k)} {v}" for k, v in value.items())
        lines.append(f"- {name}: {value}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # train.py's parser class: errors as one line; no abbreviations, so that train.py's --seed is not our --seeds
    p = train.Parser(prog="compare.py", description=__doc__.split("\n\n")[0].strip(),
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
    args, rest = p.parse_known_args(argv)  # the rest goes to train.py, e.g. --preset gpu --n_layer 6
    out_dir = Path(args.out_dir)
    command = "python compare.py " + shlex.join(argv)

    lr_sweep_losses = None
    if args.runs:
        if rest:
            p.error(f"{' '.join(rest)}: train.py options have no effect with --runs")
        runs = find_runs(args.runs)
        if args.models:
            runs = [r for r in runs if r["key"] in args.models.split(",")]
    else:
        for option, instead in OWN_OPTIONS.items():
            if has_option(rest, option):
                p.error(f"{option} is set by compare.py; use {instead}")
        if args.lr_sweep and has_option(rest, "--learning_rate"):
            p.error("--learning_rate and --lr-sweep: choose one")
        available = [k for k in VARIANTS if VARIANTS[k][0] in train.MODELS]
        keys = args.models.split(",") if args.models else available
        for key in keys:
            if key not in available:
                p.error(f"--models: {key!r} is not one of {', '.join(available)}")
        for key in keys:  # bad train.py options fail now, not after an hour of training
            train.resolve_settings(run_argv(key, 0, out_dir, args, rest))
        lrs = {}
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
        runs = [read_run(f) for f in folders]
    if not runs:
        raise train.ConfigError("no runs to compare")
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
    print(f"wrote {out_dir / 'convergence.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    try:
        main()
    except (train.ConfigError, train.prepare_data.DataError) as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.TrainingError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(1)
