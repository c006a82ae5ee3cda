"""
How much faster do nGPT and anGPT converge than GPT, and at what cost per step? Trains every model with train.py
on the same data, token budget and evaluation schedule, each with its own paper recipe and learning rate, then
plots the validation loss and writes a table of steps to target, speedups and step times.

$ python compare.py                                  # GPT, GPT+ in 2 recipes, QK-RMSNorm, nGPT, anGPT: 3 seeds each
$ python compare.py --seeds 1 --iters 300 --models gpt,ngpt --n_layer 2      # any other option goes to train.py
$ python compare.py --runs out/gpu/gpt out/gpu/ngpt --out_dir compare_gpu --log-x   # runs trained elsewhere

Baselines follow the papers: nGPT against GPT, anGPT against the anGPT paper's GPT+ trained with that paper's recipe
(GPT+QK-norm, Table F.2), the QK-norms against GPT; results.md also gives every model against each baseline. A
model's target is its baseline's final validation loss (mean over seeds); its steps to target are read off its own
mean eval curve by linear interpolation, and speedup = baseline steps / model steps. --baseline KEY sets one
baseline for all models, --target-loss X one target.

The runs are interleaved (seed 0 of every model, then seed 1, ...) so that whatever else the machine does slows
every model alike. A run that --out_dir already holds complete, with the same settings, is reused, and an
interrupted one is resumed: run the same command again to go on.

Writes into --out_dir (default compare_out/): convergence.png (val loss against steps, tokens and training time,
mean over seeds with the min-max band), results.md (the tables, the settings and the command), results.json (every
eval curve and step time: what the tables are computed from) and runs/<model>-s<seed>/, the train.py runs.

The variants compared, and the helpers to train, read and plot runs, are defined here for the scripts in
experiments/, which answer the other questions (sweeps, context length, length extrapolation, norm growth, speed).
"""

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

import prepare_data
import train
from train import ConfigError

# -----------------------------------------------------------------------------
# The models compared. key: (model file, train.py options, name in tables and plots)
VARIANTS = {
    "gpt": ("gpt", [], "GPT"),
    "gpt_qk": ("gpt", ["--qk_norm", "true"], "GPT+QK-norm"),  # the anGPT paper's GPT+: L2 norms and a gain g
    # GPT+ trained as the anGPT paper trains it (Table F.2): warmup over 20% of the run, cosine decay to 0.01 x the
    # peak LR, eps 1e-9 (decay 0.1, betas and clipping as GPT's RECIPE); its peak LR tuned on the CPU preset
    "gpt_qk_f2": ("gpt", ["--qk_norm", "true", "--warmup", "20%", "--min_lr_ratio", "0.01", "--eps", "1e-9",
                          "--learning_rate", "1e-3"], "GPT+QK-norm, Table F.2"),
    "gpt_qk_rms": ("gpt", ["--qk_norm", "rms"], "GPT+QK-RMSNorm"),  # RMSNorm on q and k, per-channel gains
    "ngpt": ("ngpt", [], "nGPT"),
    "angpt": ("angpt", [], "anGPT"),
    # Merrill et al.'s sqrt(t) norm growth: GPT without weight decay, at a constant LR, and both
    "gpt_no_wd": ("gpt", ["--weight_decay", "0"], "GPT, no weight decay"),
    "gpt_const_lr": ("gpt", ["--decay_lr", "false"], "GPT, constant LR"),
    "gpt_no_wd_const_lr": ("gpt", ["--weight_decay", "0", "--decay_lr", "false"], "GPT, no weight decay, constant LR"),
}
ARCHITECTURES = ("gpt", "gpt_qk", "gpt_qk_rms", "ngpt", "angpt")  # differ in the model; the others in the recipe
COMPARED = ("gpt", "gpt_qk", "gpt_qk_f2", "gpt_qk_rms", "ngpt", "angpt")  # compare.py's default: GPT+ in both recipes
COLORS = {"gpt": "#333333", "gpt_qk": "#1f77b4", "gpt_qk_f2": "#ff7f0e", "gpt_qk_rms": "#17becf", "ngpt": "#2ca02c",
          "angpt": "#d62728", "gpt_no_wd": "#9467bd", "gpt_const_lr": "#8c564b", "gpt_no_wd_const_lr": "#e377c2"}
PAPER_BASELINES = {"gpt": "gpt", "gpt_qk": "gpt", "gpt_qk_f2": "gpt", "gpt_qk_rms": "gpt", "ngpt": "gpt",
                   "angpt": "gpt_qk_f2", "gpt_no_wd": "gpt", "gpt_const_lr": "gpt",
                   "gpt_no_wd_const_lr": "gpt"}
# a baseline that was not trained gives way to the same model in another recipe, else to GPT
BASELINE_STAND_INS = {"gpt_qk_f2": "gpt_qk"}
BASELINE_KEYS = ("gpt", "gpt_qk", "gpt_qk_f2", "gpt_qk_rms")  # every model's steps to each baseline's final loss
EVALS_PER_RUN = 20  # unless --eval_interval is given: steps to target interpolate between close points
# train.py options that these scripts set for every run, with what to use instead
OWN_OPTIONS = {"--model": "--models", "--seed": "--seeds", "--out_dir": "the script's --out_dir",
               "--max_iters": "--iters", "--resume": "the same command again"}


def label(key):
    return VARIANTS[key][2] if key in VARIANTS else key


def variant_of(config):
    """The VARIANTS key of a run's settings (its config.json): the most specific variant whose model file and
    options they match. A run that lacks an option (logged before the option existed) does not match it."""
    def same(value, text):
        try:
            return value == ((text == "true") if isinstance(value, bool) else type(value)(text))
        except ValueError:  # "20%" against a warmup in steps
            return False

    def matches(options):
        return all(config.get(option[2:]) is not None and same(config[option[2:]], text)
                   for option, text in zip(options[::2], options[1::2]))
    found = [key for key, (model, options, _) in VARIANTS.items() if model == config["model"] and matches(options)]
    return max(found, key=lambda key: len(VARIANTS[key][1])) if found else config["model"]


def choose_models(text, default):
    """The VARIANTS keys of a --models option, or the default ones."""
    keys = text.split(",") if text else list(default)
    unknown = [key for key in keys if key not in VARIANTS]
    if unknown:
        raise ConfigError(f"--models: {', '.join(unknown)} is not one of {', '.join(VARIANTS)}")
    return keys


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


def mean_std(mean, std):
    """'1.2345 ± 0.0123'; the mean alone where there is no std (one value)."""
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


# -----------------------------------------------------------------------------
# Reading and training train.py runs

def run_folders(paths, holding="log.jsonl"):
    """train.py run folders (with a log.jsonl, or another file they hold) among `paths`, or inside them."""
    found = []
    for path in map(Path, paths):
        inside = sorted(p.parent for p in path.glob(f"*/{holding}"))
        if not (path / holding).exists() and not inside:
            raise ConfigError(f"--runs {path}: no {holding} in it or in its subfolders")
        found += [path] if (path / holding).exists() else inside
    return found


def read_config(folder):
    """A run's config.json, in today's options (train.in_current_terms)."""
    return train.in_current_terms(json.loads((Path(folder) / "config.json").read_text()))


def read_run_log(folder):
    """A run folder's settings, log records, and eval records (sorted by step, one per step: a resumed run may
    repeat one)."""
    config = read_config(folder)
    records = train.read_log(Path(folder) / "log.jsonl")
    evals = {r["iter"]: r for r in records if "val_loss" in r}
    return config, records, [evals[it] for it in sorted(evals)]


def read_run(folder):
    """One run's eval curve and median step time (the first step record left out: warm-up and compilation)."""
    config, records, evals = read_run_log(folder)
    if not evals:
        raise ConfigError(f"{folder}/log.jsonl has no eval records yet")
    steps = [r for r in records if "ms_per_step" in r][1:]
    median = lambda field: float(np.median([r[field] for r in steps])) if steps else None
    return dict(key=variant_of(config), seed=config["seed"], dir=str(folder), learning_rate=config["learning_rate"],
                iters=[r["iter"] for r in evals], tokens=[r["tokens"] for r in evals],
                time_s=[r["time_s"] for r in evals], val_loss=[r["val_loss"] for r in evals],
                final_val_loss=evals[-1]["val_loss"], ms_per_step=median("ms_per_step"),
                tokens_per_s=median("tokens_per_s"), config=config)


def run_argv(key, seed, folder, rest, iters=None):
    """The train.py command line of one run of variant `key`: rest (the user's train.py options), then --max_iters
    iters if given, and evaluations every max_iters / EVALS_PER_RUN steps unless rest sets --eval_interval."""
    for option, instead in OWN_OPTIONS.items():
        if any(a == option or a.startswith(option + "=") for a in rest):
            raise ConfigError(f"{option} is set for every run; use {instead}")
    model, options, _ = VARIANTS[key]
    argv = ["--model", model, *options, "--seed", str(seed), "--out_dir", str(folder), *rest]
    argv += ["--max_iters", str(iters)] if iters else []
    s, given = train.resolve_settings(argv)  # a bad option fails here, before any run trains
    if "eval_interval" not in given:
        argv += ["--eval_interval", str(max(1, s["max_iters"] // EVALS_PER_RUN))]
    return argv


def settings_differ(saved, s):
    """The settings of `s` that a run's saved config.json does not share (the system's aside): an option newer
    than the run counts with its default value there."""
    defaults = dict(train.DEFAULTS, **{k: by_model[saved["model"]] for k, by_model in train.model_options().items()
                                       if saved["model"] in by_model})
    return [k for k, v in s.items() if k not in train.SYSTEM_KEYS and saved.get(k, defaults.get(k)) != v]


def other_data(saved, s):
    """How the data a run was trained on (its config.json) differs from the data that `s` names now, or None: its
    vocabulary size, and the hash of its validation tokens where the run recorded one. None too while the dataset
    is not prepared, as nothing then can be compared."""
    folder = Path(s["data_dir"]) / s["dataset"]
    if not prepare_data.has_tokens(folder):
        return None
    now = dict(vocab_size=train.vocab_size_of(folder), tokens_hash=prepare_data.tokens_hash(folder))
    differ = [f"{name} {saved[name]} there, {value} now" for name, value in now.items()
              if saved.get(name) is not None and saved[name] != value]
    return ", ".join(differ) or None


def check_same_settings(folder, s):
    """A run in `folder` is reused or resumed only if it was started with the same settings `s`, on the same data."""
    saved = read_config(folder)
    differ = settings_differ(saved, s)
    if differ:
        raise ConfigError(f"{folder} holds a run with other settings ({', '.join(differ)}); "
                          f"delete it or use another --out_dir")
    data = other_data(saved, s)
    if data:
        raise ConfigError(f"{folder} holds a run trained on other data than {Path(s['data_dir']) / s['dataset']} "
                          f"({data}); delete it or use another --out_dir")


def reusable_runs(paths):
    """[(folder, its config)] of every train.py run in `paths` or below them: --reuse."""
    found = []
    for path in map(Path, paths):
        folders = sorted(p.parent for p in path.rglob("config.json"))
        if not folders:
            raise ConfigError(f"--reuse {path}: no train.py run (config.json) in it or below it")
        found += [(folder, read_config(folder)) for folder in folders]
    return found


def copy_finished_run(folder, s, reusable):
    """Copy into `folder`, if it holds no run yet, a finished run of `reusable` trained with the settings `s`:
    complete, or stopped as diverged (a diverged.txt). Returns the folder copied from, or None."""
    if (folder / "config.json").exists():
        return None
    for other, saved in reusable:
        if saved.get("model") != s["model"] or settings_differ(saved, s):
            continue
        data = other_data(saved, s)
        if data:
            print(f"not reused: {other} has the same settings but was trained on other data ({data})")
            continue
        complete = any(r["iter"] == s["max_iters"] and "val_loss" in r for r in train.read_log(other / "log.jsonl"))
        if complete or (other / "diverged.txt").exists():
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "log.jsonl", "diverged.txt"):
                if (other / name).exists():
                    shutil.copyfile(other / name, folder / name)
            return other
    return None


def train_run(argv, title, reusable=()):
    """Train one run, or reuse it if its folder already holds it complete, or if `reusable` has it (copied in);
    resume it if it was interrupted. Returns train.main's last evaluation."""
    s = train.resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    source = copy_finished_run(folder, s, reusable)
    if source:
        print(f"=== {title}: {source} has the same settings; copied into {folder}")
    if (folder / "config.json").exists():
        check_same_settings(folder, s)
        done = [r for r in train.read_log(folder / "log.jsonl") if "val_loss" in r and r["iter"] == s["max_iters"]]
        if done:
            print(f"=== {title}: reusing the complete run in {folder}")
            return dict(val_loss=done[-1]["val_loss"])
        argv = argv + ["--resume"]
    print(f"=== {title}: python train.py {shlex.join(argv)}")
    final = train.main(argv)
    if final.get("stopped"):
        print("interrupted; run the same command again to go on from here")
        sys.exit(130)
    return final


def train_runs(keys, seeds, out_dir, rest, iters=None, reusable=()):
    """Train (or reuse) runs/<key>-s<seed> of every model and seed in out_dir, interleaved, and read them back."""
    argvs = {(key, seed): run_argv(key, seed, out_dir / "runs" / f"{key}-s{seed}", rest, iters)
             for seed in range(seeds) for key in keys}
    for n, ((key, seed), argv) in enumerate(argvs.items(), 1):
        train_run(argv, f"[{n}/{len(argvs)}] {label(key)} seed {seed}", reusable)
    return [read_run(out_dir / "runs" / f"{key}-s{seed}") for key, seed in argvs]


# -----------------------------------------------------------------------------
# Aggregates per model

def summarize(runs, baseline_arg=None, target_loss=None):
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
                           curve=mean_curve(by_key[key]), final_val_loss=finals,
                           final_val_loss_mean=float(np.mean(finals)),
                           final_val_loss_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
                           ms_per_step=float(np.mean(ms)) if ms else None,
                           tokens_per_s=float(np.mean(tps)) if tps else None)
    for key, m in models.items():
        base = baseline_arg or PAPER_BASELINES.get(key, "gpt")
        while base not in models and base in BASELINE_STAND_INS:
            base = BASELINE_STAND_INS[base]
        if base not in models:  # e.g. anGPT without any GPT+QK-norm: fall back to GPT, or the first model
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


# -----------------------------------------------------------------------------
# Plots (their helpers serve the experiments' plots too) and the table

def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def save_with_legend_below(fig, handles, several, title, path, bottom=0.08):
    """One legend under the panels, where it cannot hide a curve, then the title, and the figure into path."""
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               title="mean and min-max band over seeds" if several else None)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom + (0.04 if several else 0), 1, 1))
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def mark_at_top(ax, xs, row, color):
    """Crosses at the top of the panel for points that have no loss to show (diverged, refused), one row per model
    so that none hides another; x in data units, y in the panel's."""
    if xs:  # an empty line that may draw outside the panel would still take room in the layout
        ax.plot(xs, [0.97 - 0.035 * row] * len(xs), "x", color=color, ms=9, mew=2, ls="",
                transform=ax.get_xaxis_transform(), clip_on=False)


def room_at_top(ax, rows):
    """Raise the top of the y-range so that the curves stay below the rows of crosses of mark_at_top."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, bottom + (top - bottom) / (0.95 - 0.035 * rows))


def plot(models, path, log_x, title):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

    max_time = max(m["curve"]["time_s"][-1] for m in models.values())
    unit, per = ("s", 1) if max_time < 300 else ("min", 60) if max_time < 3 * 3600 else ("h", 3600)
    fig, axes = pyplot().subplots(1, 3, figsize=(17, 5.6), sharey=True)
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


def fmt(value, spec, none="-", suffix=""):
    return none if value is None else format(value, spec) + suffix


def settings_lines(settings, skip=()):
    """The settings as markdown bullets; one that differs between models shows each model's value."""
    lines = ["## Settings", ""]
    for name, value in settings.items():
        if name not in skip:
            shown = ", ".join(f"{label(k)} {v}" for k, v in value.items()) if isinstance(value, dict) else value
            lines.append(f"- {name}: {shown}")
    return lines


def markdown(models, settings, command):
    lines = ["# Convergence: " + ", ".join(m["label"] for m in models.values()), "",
             "| model | LR | final val loss | target (baseline) | steps to target | speedup | ms/step | vs GPT | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, m in models.items():
        lrs = ", ".join(f"{lr:.3g}" for lr in m["learning_rate"])
        lines.append(f"| {m['label']} | {lrs} | {mean_std(m['final_val_loss_mean'], m['final_val_loss_std'])} | "
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
    return "\n".join(lines + settings_lines(settings) + ["", "## Command", "", "```sh", command, "```", ""])


# -----------------------------------------------------------------------------
# The command line, shared with the experiments

def script_parser(prog, doc, out_dir):
    """A parser of the options every comparing script has: --models, --seeds, --iters, --out_dir; what it does not
    know goes to train.py (parse_known_args). No abbreviations, so that train.py's --seed is not --seeds."""
    p = train.Parser(prog=prog, description=doc.split("\n\n")[0].strip(), epilog=doc.split("\n\n", 1)[1],
                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated, of {','.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model, 0..N-1 (default: 3)")
    p.add_argument("--iters", type=int, help="optimizer steps per run (default: the preset's)")
    p.add_argument("--out_dir", default=out_dir, help=f"default: {out_dir}")
    p.add_argument("--reuse", nargs="+", default=[], metavar="FOLDER",
                   help="finished runs in these folders (or their subfolders) that have a run's settings are copied "
                        "in instead of trained")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = script_parser("compare.py", __doc__, "compare_out")
    p.add_argument("--runs", nargs="+", help="plot and tabulate these train.py runs (or folders of them) instead")
    p.add_argument("--baseline", help="one baseline for all models (default: the papers')")
    p.add_argument("--target-loss", "--target_loss", type=float, help="one target val loss for all models")
    p.add_argument("--log-x", "--log_x", action="store_true", help="log-scaled x axes")
    args, rest = p.parse_known_args(argv)
    out_dir = Path(args.out_dir)
    command = "python compare.py " + shlex.join(argv)
    if args.runs:
        if rest:
            p.error(f"{' '.join(rest)}: train.py options have no effect with --runs")
        runs = [read_run(f) for f in run_folders(args.runs)]
        runs = [r for r in runs if not args.models or r["key"] in args.models.split(",")]
    else:
        runs = train_runs(choose_models(args.models, COMPARED), args.seeds, out_dir, rest, args.iters,
                          reusable_runs(args.reuse))
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
    table = markdown(models, settings, command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, settings=settings, target_loss_option=args.target_loss,
                   baseline_option=args.baseline, models=models,
                   runs=[{k: v for k, v in r.items() if k != "config"} for r in runs])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:4 + len(models)]))  # the table
    print(f"wrote {out_dir / 'convergence.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    train.run_main(main, "compare.py")
