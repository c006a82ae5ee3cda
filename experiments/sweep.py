"""
How does the result change with a train.py option? Every model at each value, the same seeds at every one: the
final val loss against the value, a diverged run marked as such, and, unless the learning rate is swept, each
model's speedup over its paper's baseline at each value (compare.py's steps to the baseline's final loss). Both
papers report their speedups far from the CPU preset (24 layers, contexts of 1k to 8k, billions of tokens), so a
trend along depth, context or training length tells more than the one point the preset is.

Every model at the same learning rates (--models, --seeds, --iters and any train.py option as in compare.py):
$ python -m experiments.sweep --sweep learning_rate=1e-3,2e-3,4e-3,8e-3 --seeds 1 --iters 1000 --out_dir results/lr

Values written xK are K times each model's own: its recipe's learning rate, tuned anew around it:
$ python -m experiments.sweep --sweep learning_rate=x0.25,x0.5,x1,x2,x4 --seeds 1 --out_dir sweep_out/lr_tuning

A trend with every point tuned: with --tune_lr each model's peak LR at each value is the best of 0.5, 1 and 2 times
its recipe's at seed 0 (a step further where the best is at the edge), and the other seeds train at that LR;
--lr_grid VALUE=0.5,1 tries fewer at one costly value (x2 then only if x1 is the best of the two).
--reuse copies in the finished runs of earlier commands that have a run's settings, instead of training them:
$ python -m experiments.sweep --sweep n_layer=2,4,8,16 --tune_lr --seeds 2 --models gpt,gpt_qk_f2,ngpt,angpt \
    --reuse results/cpu/runs results/lr_gpt_qk_f2/sweep --out_dir results/depth

Some options are swept with something kept fixed:
- batch_size, gradient_accumulation_steps: the token budget (max_iters x value is fixed, and eval_interval,
  eval_iters and warmup_iters are scaled like max_iters);
- block_size: the tokens per step (--tokens_per_step, default the preset's: the batch size is tokens / context),
  as the nGPT paper compares contexts;
- max_iters, the training length, stands in for --iters; its speedups are plotted against tokens per parameter.
$ python -m experiments.sweep --sweep block_size=64,256,1024 --tokens_per_step 1024 --seeds 2 --iters 1000 \
    --eval_interval 100 --eval_iters 20 --models gpt,gpt_qk,ngpt,angpt --out_dir results/contexts

Writes into --out_dir (default sweep_out/): sweep.png (the final val loss against the value, min-max band over seeds,
and the speedups beside the papers' figures), results.md (the tables), results.json and
sweep/<model>-<option><value>[-lr<LR>]-s<seed>/, the runs. A run that train.py stopped on a non-finite loss gets a
diverged.txt, so that the same command again reuses it too.
"""

import json
import math
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np

import compare
import train

LOG_X_OPTIONS = ("learning_rate", "batch_size", "gradient_accumulation_steps", "block_size", "max_iters")
TOKEN_BUDGET_OPTIONS = ("batch_size", "gradient_accumulation_steps")  # swept at a fixed token budget
COUNT_OPTIONS = (*TOKEN_BUDGET_OPTIONS, "block_size", "max_iters")  # whose values are positive integers
RISE_FRACTION = 0.5  # a run whose val loss climbs back more than this part of what it had gained has diverged
NEAR_BEST = 0.02  # the values whose final loss is within 2% of a model's best are "near the best"
LR_GRID = (0.5, 1, 2)  # --tune_lr: multiples of each model's recipe LR tried at seed 0
CHINCHILLA = 20  # training tokens per parameter (Hoffmann et al. 2022)
# The papers' speedups in steps to the same loss, by swept option: (model, xs, speedups, source); for max_iters x is
# in training tokens per parameter
PAPER_SPEEDUPS = {
    "block_size": [("ngpt", (1024, 4096, 8192), (4, 10, 20), "nGPT vs GPT, nGPT paper Fig. 2 (0.5B-1B parameters)")],
    "n_layer": [("ngpt", (24,), (4,), "nGPT vs GPT, nGPT paper (0.5B, 24 layers, context 1k)"),
                ("angpt", (24,), (1.4,), "anGPT vs GPT+, anGPT paper (0.5B, 24 layers)")],
    "max_iters": [("angpt", (10, 140), (1.4, 1.4), "anGPT vs GPT+, anGPT paper Fig. 3 (0.5x to 7x Chinchilla, 0.5B)"),
                  ("ngpt", (200,), (4,), "nGPT vs GPT at 1k, NVIDIA's README: after about 200k steps (0.5B)")],
}


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


def is_number(text):
    try:
        return math.isfinite(float(text.removeprefix("x")))
    except ValueError:
        return False


# -----------------------------------------------------------------------------
# The runs

def point_argv(key, seed, value, lr, args, rest):
    """The train.py command line of one run: the value as given, xK as K times the model's own; a batch size at the
    token budget of max_iters steps at the preset's batch size (max_iters, and the eval and warmup steps with it,
    scaled by the preset's value / value); a context at --tokens_per_step; lr, if given, as the peak learning rate.
    Later options win over the user's."""
    option = args.option
    ref = train.resolve_settings(compare.run_argv(key, seed, args.out_dir, rest, args.iters))[0]
    name = f"{key}-{option}{value}" + (f"-lr{lr:g}" if lr else "") + f"-s{seed}"
    folder = Path(args.out_dir) / "sweep" / name
    if value.startswith("x"):
        value = str(type(ref[option])(float(value[1:]) * ref[option]))
    extra, iters = [f"--{option}", value], args.iters
    if option == "max_iters":
        extra, iters = [], int(value)
    elif option in TOKEN_BUDGET_OPTIONS:
        scale = ref[option] / int(value)
        iters = max(1, round(ref["max_iters"] * scale))
        # eval_iters too, so that every point is evaluated on about as many validation sequences
        for option_name, name, least in (("eval_interval", "eval_interval", 1), ("eval_iters", "eval_iters", 1),
                                         ("warmup", "warmup_iters", 0)):  # warmup: its steps, scaled
            extra += [f"--{option_name}", str(max(least, round(ref[name] * scale)))]
    elif option == "block_size":
        extra += ["--batch_size", str(args.tokens_per_step // int(value)), "--gradient_accumulation_steps", "1"]
    if lr:
        extra += ["--learning_rate", repr(lr)]
    return compare.run_argv(key, seed, folder, [*rest, *extra], iters)


def sweep_point(argv, title, reusable=()):
    """Train one run of the sweep (or reuse it) and read it back, with why it diverged (None if it did not)."""
    s = train.resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    marker = folder / "diverged.txt"
    source = compare.copy_finished_run(folder, s, reusable)
    if source:
        print(f"=== {title}: {source} has the same settings; copied into {folder}")
    if marker.exists():
        compare.check_same_settings(folder, s)
        print(f"=== {title}: reusing the diverged run in {folder}")
        reason = marker.read_text().strip()
    else:
        try:
            compare.train_run(argv, title)
            reason = None
        except train.TrainingError as e:  # a result of the sweep, not a crash of it
            reason = "train.py stopped: " + str(e).split(";")[0]
            print(f"{title}: diverged ({reason})")
            marker.write_text(reason + "\n")
    config, _, evals = compare.read_run_log(folder)
    losses = [r["val_loss"] for r in evals]
    reason = reason or divergence(losses)
    losses = [loss if math.isfinite(loss) else None for loss in losses]  # json has no NaN or inf
    return dict(seed=s["seed"], dir=str(folder), iters=[r["iter"] for r in evals], val_loss=losses,
                final_val_loss=losses[-1] if evals[-1]["iter"] == s["max_iters"] else None, diverged=reason,
                config=config)


def final_loss(point):
    """A run's final val loss for picking the best LR; a diverged run is the worst."""
    return math.inf if point["diverged"] or point["final_val_loss"] is None else point["final_val_loss"]


def pick_lr(tried):
    """The learning rate of `tried` ({lr: seed 0's point}) with the lowest final loss, and the one to try next if
    that is at the grid's edge (None if not, or if every run diverged)."""
    best = min(tried, key=lambda lr: final_loss(tried[lr]))
    if math.isinf(final_loss(tried[best])) or min(tried) < best < max(tried):
        return best, None
    return best, best / 2 if best == min(tried) else best * 2


def tuned_runs(keys, values, args, rest, reusable):
    """--tune_lr: at each value, every model at seed 0 at LR_GRID (or --lr_grid's) times its recipe's peak LR, one
    step beyond the grid where the best is at its edge, then the other seeds at the best. A value's runs come
    together, so that every finished value is a finished point. Returns ({key: {value: [seed 0's point at the pick, seed 1's, ...]}},
    {key: {value: {lr: seed 0's point}}}, {key: {value: the picked lr}})."""
    points = {key: {value: [] for value in values} for key in keys}
    probes = {key: {value: {} for value in values} for key in keys}
    picked = {key: {} for key in keys}

    def train_at(key, value, lr, seed):
        title = f"{compare.label(key)} {args.option} {value}, lr {lr:g}, seed {seed}"
        return sweep_point(point_argv(key, seed, value, lr, args, rest), title, reusable)

    for value in values:
        for factor in args.lr_grids.get(value, LR_GRID):
            for key in keys:
                recipe_lr = train.resolve_settings(point_argv(key, 0, value, None, args, rest))[0]["learning_rate"]
                probes[key][value][factor * recipe_lr] = train_at(key, value, factor * recipe_lr, 0)
        for key in keys:
            best, beyond = pick_lr(probes[key][value])
            if beyond:
                probes[key][value][beyond] = train_at(key, value, beyond, 0)
                best, _ = pick_lr(probes[key][value])
            picked[key][value] = best
            points[key][value].append(probes[key][value][best])
        for seed in range(1, args.seeds):
            for key in keys:
                points[key][value].append(train_at(key, value, picked[key][value], seed))
    return points, probes, picked


def plain_runs(keys, values, args, rest, reusable):
    """Every model at every value and seed at its recipe's LR, interleaved: seed 0 at every value, then seed 1, ...
    Returns {key: {value: [point per seed]}}."""
    argvs = {(seed, value, key): point_argv(key, seed, value, None, args, rest)
             for seed in range(args.seeds) for value in values for key in keys}
    points = {key: {value: [] for value in values} for key in keys}
    for n, ((seed, value, key), argv) in enumerate(argvs.items(), 1):
        title = f"[{n}/{len(argvs)}] {compare.label(key)} {args.option} {value} seed {seed}"
        points[key][value].append(sweep_point(argv, title, reusable))
    return points


# -----------------------------------------------------------------------------
# The numbers

def summarize(points):
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
        models[key] = dict(label=compare.label(key), points=summary, near_best=near,
                           best=min(near, key=means.get) if near else None)
    return models


def to_the_same_loss(curve, base, target, base_steps):
    """A model's speedup over its baseline in steps to the same loss: to the baseline's `target`, which it reaches at
    base_steps. A model that never reaches it is compared at its own final loss instead, which the baseline reaches
    first: the speedup is then below 1, where a trend would otherwise break."""
    steps = compare.steps_to_reach(curve["iters"], curve["val_loss"], target)
    reached = steps is not None
    if not reached:
        target = curve["val_loss"][-1]
        steps = compare.steps_to_reach(curve["iters"], curve["val_loss"], target)
        base_steps = compare.steps_to_reach(base["iters"], base["val_loss"], target)
    return dict(target_loss=target, baseline_steps=base_steps, steps_to_target=steps, reached=reached,
                speedup=compare.speedup(base_steps, steps))


def speedups(points, values, baseline=None):
    """{value: compare.summarize of the runs at that value that did not diverge}, with each model's steps to its
    baseline's final loss and the speedup (to_the_same_loss), and under "at_best" the same at the baseline's lowest
    mean val loss, which a baseline that overfits reaches before its last step."""
    out = {}
    for value in values:
        runs = [dict(compare.read_run(r["dir"]), key=key) for key, by_value in points.items()
                for r in by_value[value] if not r["diverged"]]
        models = compare.summarize(runs, baseline) if runs else {}
        for key, m in models.items():
            base = models[m["baseline"]]["curve"]
            lowest = int(np.argmin(base["val_loss"]))
            if key == m["baseline"]:  # reaches its own final loss at its last step, by definition
                m["reached"] = True
            else:
                m.update(to_the_same_loss(m["curve"], base, m["target_loss"], m["baseline_steps"]))
            m["at_best"] = to_the_same_loss(m["curve"], base, base["val_loss"][lowest], float(base["iters"][lowest]))
        out[value] = models
    return out


def tokens_per_parameter(points, value):
    """Training tokens per parameter of a value's runs (of its first model's first run)."""
    config = next(iter(points.values()))[value][0]["config"]
    return config["max_iters"] * config["tokens_per_iter"] / config["num_params"]


def sweep_settings(points, option):
    """{setting: its value if all runs agree, else {who: value} by swept value or by model}."""
    runs = [(key, value, r["config"]) for key, by_value in points.items() for value, rs in by_value.items() for r in rs]
    out = {}
    for name in ("learning_rate", *compare.SHOWN_SETTINGS):
        if name == option:
            continue
        seen = lambda pick: {who: {json.dumps(c.get(name)) for k, v, c in runs if pick(k, v) == who}
                             for who in dict.fromkeys(pick(k, v) for k, v, _ in runs)}
        by_value, by_model = seen(lambda k, v: f"{option} {v}"), seen(lambda k, v: compare.label(k))
        for groups in ({"all": set().union(*by_value.values())}, by_value, by_model,
                       seen(lambda k, v: f"{compare.label(k)} at {v}")):
            if all(len(values) == 1 for values in groups.values()):
                one = {who: json.loads(values.pop()) for who, values in groups.items()}
                out[name] = one["all"] if "all" in one else one
                break
        else:
            out[name] = "differs per run (results.json)"
    return out


# -----------------------------------------------------------------------------
# The plot and the tables

def x_positions(option, values):
    """Where each value sits on the x axis: its number, or side by side for words."""
    numeric = all(is_number(v) for v in values)
    return {v: float(v.removeprefix("x")) if numeric else i for i, v in enumerate(values)}, numeric


def plot_losses(ax, option, models, log_x):
    """The final val loss of each model against the value, with its min-max band over seeds."""
    values = list(next(iter(models.values()))["points"])
    x_of, numeric = x_positions(option, values)
    for row, (key, m) in enumerate(models.items()):
        color, points = compare.COLORS.get(key), m["points"]
        done = [v for v in values if points[v]["mean"] is not None]
        x = [x_of[v] for v in done]
        ax.plot(x, [points[v]["mean"] for v in done], "o-", color=color, lw=2, label=m["label"])
        if any(len(points[v]["seeds"]) > 1 for v in done):
            ax.fill_between(x, [points[v]["lo"] for v in done], [points[v]["hi"] for v in done], color=color,
                            alpha=0.2, lw=0)
        compare.mark_at_top(ax, [x_of[v] for v in values if points[v]["diverged"]], row, color)
    if any(p["diverged"] for m in models.values() for p in m["points"].values()):
        compare.room_at_top(ax, len(models))
        ax.plot([], [], color="gray", marker="x", ls="", mew=2, label="diverged (at the top)")
    if log_x or (numeric and option in LOG_X_OPTIONS and min(x_of.values()) > 0):
        set_log_x(ax)
    ax.set_xticks([x_of[v] for v in values], values)  # the values as given on the command line
    ax.set_xlabel(option)
    ax.set_ylabel("final validation loss")
    ax.set_title("final val loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)


def set_log_x(ax):
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_speedups(ax, option, by_value, x_of):
    """Each model's speedup over its baseline against the value (log-log), with the papers' figures: a line breaks
    where there is none (the model or its baseline diverged), and a cross at the top marks the value."""
    from matplotlib.ticker import FuncFormatter

    values = list(by_value)
    missing = False
    for key, m in by_value[values[0]].items():
        if m["baseline"] == key:
            continue  # a baseline's speedup over itself is 1 by definition
        found = [by_value[v].get(key, {}).get("speedup") for v in values]
        ax.plot([x_of[v] for v in values], [math.nan if s is None else s for s in found], "o-", lw=2,
                color=compare.COLORS.get(key), label=f"{m['label']} vs {by_value[values[0]][m['baseline']]['label']}")
        compare.mark_at_top(ax, [x_of[v] for v, s in zip(values, found) if s is None], 0, compare.COLORS.get(key))
        missing = missing or None in found
    if missing:
        ax.plot([], [], color="gray", marker="x", ls="", mew=2, label="no speedup: diverged (at the top)")
    for key, xs, ys, source in PAPER_SPEEDUPS.get(option, []):
        ax.plot(xs, ys, "s--", color=compare.COLORS.get(key), alpha=0.5, lw=1.5, label=source)
    if option == "max_iters":
        ax.axvline(CHINCHILLA, color="gray", ls="-.", lw=1, label=f"Chinchilla: {CHINCHILLA} tokens per parameter")
    ax.axhline(1, color="gray", ls=":", lw=1)
    set_log_x(ax)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ticks = sorted(set(x_of.values()) | {x for _, xs, _, _ in PAPER_SPEEDUPS.get(option, []) for x in xs})
    tokens_per_param = lambda x: f"{x:.2g}" if x < 10 else f"{x:.0f}"
    ax.set_xticks(ticks, [tokens_per_param(x) if option == "max_iters" else f"{x:g}" for x in ticks])
    ax.set_xlabel("training tokens per parameter" if option == "max_iters" else option)
    ax.set_ylabel("speedup: baseline steps / model steps to the same loss")
    ax.set_title("speedup over each model's baseline")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)


def plot(option, models, by_value, x_of_speedups, path, log_x, title):
    plt = compare.pyplot()
    fig, axes = plt.subplots(1, 2 if by_value else 1, figsize=(17 if by_value else 9, 6.5), squeeze=False)
    plot_losses(axes[0, 0], option, models, log_x)
    if by_value:
        plot_speedups(axes[0, 1], option, by_value, x_of_speedups)
    fig.suptitle(textwrap.fill(title, 150 if by_value else 90), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_table(option, models, picked):
    """Rows: values, columns: models; the final val loss over seeds, in bold at the model's best value."""
    values = list(next(iter(models.values()))["points"])
    lines = [f"| {option} | " + " | ".join(m["label"] for m in models.values()) + " |", "|---|" + "---|" * len(models)]
    for value in values:
        cells = []
        for key, m in models.items():
            point = m["points"][value]
            if point["mean"] is None:
                cell = "diverged"
            else:
                cell = compare.mean_std(point["mean"], point["std"])
                cell += f" ({point['diverged']} of {len(point['seeds'])} diverged)" if point["diverged"] else ""
            cell = f"**{cell}**" if value == m["best"] else cell
            cells.append(cell + (f" at {picked[key][value]:.3g}" if picked else ""))
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    lines.append(f"| within {NEAR_BEST:.0%} of the best | "
                 + " | ".join(", ".join(m["near_best"]) or "-" for m in models.values()) + " |")
    return lines


def column(option, value, points, tokens_per_step):
    if option == "block_size":
        return f"context {value} (batch {tokens_per_step // int(value)})"
    if option == "max_iters":
        return f"{value} steps ({tokens_per_parameter(points, value):.2g} tokens/param)"
    return f"{option} {value}"


def speedup_table(option, by_value, points, tokens_per_step, field=None):
    """Rows: models (baseline), columns: values; the final val loss, then the steps to the baseline's final loss
    and the speedup (field "at_best": to the baseline's lowest loss)."""
    values = list(by_value)
    first = by_value[values[0]]
    lines = ["| model (baseline) | " + " | ".join(column(option, v, points, tokens_per_step) for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for key, m in first.items():
        cells = []
        for value in values:
            mv = by_value[value].get(key)
            if mv is None:
                cells.append("diverged")
                continue
            at = mv[field] if field else mv
            steps = (f"{at['steps_to_target']:.0f} steps to {at['target_loss']:.4f}" if at["reached"] else
                     f"not reached; at its final {at['target_loss']:.4f}: baseline {at['baseline_steps']:.0f} steps, "
                     f"model {at['steps_to_target']:.0f}")
            cells.append(f"{mv['final_val_loss_mean']:.4f}; {steps}, {at['speedup']:.2f}x")
        lines.append(f"| {m['label']} ({first[m['baseline']]['label']}) | " + " | ".join(cells) + " |")
    return lines


def lr_table(option, probes, picked):
    """Rows: values, columns: models; every learning rate tried at seed 0 with its final loss, the pick in bold."""
    keys = list(probes)
    values = list(probes[keys[0]])
    lines = [f"| {option} | " + " | ".join(compare.label(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for value in values:
        cells = []
        for key in keys:
            tried = probes[key][value]
            shown = [(f"{lr:.3g}: " + ("diverged" if math.isinf(final_loss(tried[lr])) else
                                       f"{tried[lr]['final_val_loss']:.4f}")) for lr in sorted(tried)]
            cells.append(", ".join(f"**{s}**" if lr == picked[key][value] else s
                                   for lr, s in zip(sorted(tried), shown)))
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return lines


def markdown(option, models, extra, settings, diverged_runs, command):
    n_seeds = max(len(p["seeds"]) for m in models.values() for p in m["points"].values())
    lines = [f"# Sweep of {option}: " + ", ".join(m["label"] for m in models.values()), "",
             *loss_table(option, models, extra.get("picked"))]
    spread = f"mean ± std over {n_seeds} seeds of the runs that did not diverge" if n_seeds > 1 else "one seed"
    tuned = ", at the peak learning rate picked for the model at that value" if extra.get("picked") else ""
    lines += ["", f"Final val loss: {spread}{tuned}; bold: the model's best {option}. Within {NEAR_BEST:.0%} of the "
              f"best: the values of {option} whose final loss is at most {NEAR_BEST:.0%} above the model's best, the "
              "range it tolerates. Diverged: train.py stopped the run on a non-finite loss or gradient, or its final "
              f"val loss is not below its initial one, or it climbed back more than {RISE_FRACTION:.0%} of what the "
              "run had gained. Every model runs at each value, in one process.", ""]
    if extra.get("budget"):
        budget = extra["budget"]
        lines += [f"Fixed token budget: every run sees {budget['tokens']:,} training tokens, as many as "
                  f"{budget['max_iters']} steps at the preset's {option} {budget['reference']}: max_iters x {option} "
                  f"is fixed, and eval_interval, eval_iters and warmup_iters are scaled like max_iters. The learning "
                  f"rate is not.", ""]
    by_value, points, tokens_per_step = extra.get("speedups"), extra["points"], extra.get("tokens_per_step")
    if by_value:
        lines += ["## Speedup", "", *speedup_table(option, by_value, points, tokens_per_step), "",
                  "Each cell: the final val loss; the steps to the baseline's final val loss at that value (mean "
                  "curves "
                  "over seeds), and the speedup: the baseline's steps over the model's. The baselines are the papers': "
                  "nGPT against GPT, anGPT against GPT+ with its paper's recipe (Table F.2) where it was trained. "
                  "A model that does not reach the baseline's final loss is compared at its own final loss, which the "
                  "baseline reaches first: its speedup is below 1x."]
        if option == "block_size":
            lines += [f"Every context trains on {tokens_per_step} tokens per step for the same number of steps, so on "
                      "the same tokens, and with --eval_iters fixed evaluates the same number of tokens. The nGPT "
                      "paper's nGPT over GPT: 4x at 1024, 10x at 4096, 20x at 8192 (0.5B and 1B parameters)."]
        lines.append("")
        if any(m["at_best"]["target_loss"] < m["target_loss"] for ms in by_value.values() for m in ms.values()):
            lines += ["## Speedup at the baseline's lowest loss", "",
                      *speedup_table(option, by_value, points, tokens_per_step, "at_best"), "",
                      "A baseline whose val loss rises before its last step (overfitting) ends above its lowest "
                      "loss: here the target is that lowest mean val loss, and the baseline's steps those to reach it.",
                      ""]
    if extra.get("probes"):
        lines += ["## Peak learning rates", "", *lr_table(option, extra["probes"], extra["picked"]), "",
                  f"Each model's peak LR at each value, picked by the final val loss of seed 0 among "
                  f"{', '.join(f'{f:g}' for f in LR_GRID)} times its recipe's (one step further, halved or doubled, "
                  f"where the best was at the edge); bold: the pick, at which the other seeds train."
                  + "".join(f" At {option} {value} the grid was {', '.join(f'{f:g}' for f in grid)}."
                            for value, grid in extra["lr_grids"].items()), ""]
    if diverged_runs:
        lines += ["## Diverged runs", ""] + [f"- {compare.label(key)}, {option} {value}, seed {r['seed']}: "
                                             f"{r['diverged']} ({Path(r['dir']).name})"
                                             for key, value, r in diverged_runs] + [""]
    lines += ["## Settings", ""]
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{who}: {v}" for who, v in value.items())
        lines.append(f"- {name}: {value}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def parse_sweep(p, args, rest):
    """The swept option and its values, checked before any training: each mistake is one line."""
    option, _, text = args.sweep.removeprefix("--").partition("=")
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    given = lambda name: any(a == f"--{name}" or a.startswith(f"--{name}=") for a in rest)
    if not option or not values:
        p.error(f"--sweep {args.sweep}: expected OPTION=V1,V2,..., e.g. --sweep learning_rate=1e-3,2e-3,4e-3")
    if f"--{option}" not in [o for action in train.build_parser()._actions for o in action.option_strings]:
        p.error(f"--sweep {option}: not an option of train.py")
    if option == "max_iters" and args.iters:
        p.error("--sweep max_iters: the lengths are the values; leave out --iters")
    if (option != "max_iters" and f"--{option}" in compare.OWN_OPTIONS) or given(option):
        p.error(f"--sweep {option}: give its values here only")
    if option in COUNT_OPTIONS and not all(v.isdigit() and int(v) > 0 for v in values):
        p.error(f"--sweep {option}: the values must be positive integers, got {','.join(values)}")
    if args.tune_lr and option == "learning_rate":
        p.error(f"--tune_lr tunes the learning rate at each value of another option; drop it to sweep {option}")
    for text in args.lr_grid:
        value, _, factors = text.rpartition("=")
        positive = all(is_number(f) and float(f) > 0 for f in factors.split(","))
        if not args.tune_lr or value not in values or not positive:
            p.error(f"--lr_grid {text}: expected VALUE=F1,F2,... with VALUE one of --sweep's values, and --tune_lr")
        args.lr_grids[value] = tuple(float(f) for f in factors.split(","))
    if args.tokens_per_step and option != "block_size":
        p.error("--tokens_per_step goes with --sweep block_size")
    if option == "block_size":
        for name in ("batch_size", "gradient_accumulation_steps"):
            if given(name):
                p.error(f"--{name} is set by --sweep block_size and --tokens_per_step")
        if any(args.tokens_per_step % int(v) for v in values):
            p.error(f"--sweep block_size={','.join(values)}: expected context lengths that divide --tokens_per_step "
                    f"{args.tokens_per_step}, such as 64,256 (or set --tokens_per_step)")
    if all(is_number(v) for v in values):
        values.sort(key=lambda v: float(v.removeprefix("x")))
    return option, values


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = compare.script_parser("experiments.sweep", __doc__, "sweep_out")
    p.add_argument("--sweep", required=True, metavar="OPTION=V1,V2,...", help="the train.py option and its values")
    p.add_argument("--tune_lr", action="store_true",
                   help="at each value, pick each model's peak LR from 0.5, 1 and 2 times its recipe's at seed 0")
    p.add_argument("--lr_grid", action="append", default=[], metavar="VALUE=F1,F2,...",
                   help="with --tune_lr: the multiples of the recipe's LR tried at this value instead")
    p.add_argument("--tokens_per_step", type=int, help="--sweep block_size: tokens per step at every context "
                                                       "(default: the preset's)")
    p.add_argument("--baseline", help="one baseline for all models in the speedups (default: the papers')")
    p.add_argument("--log-x", "--log_x", action="store_true", help="a log-scaled x axis")
    args, rest = p.parse_known_args(argv)
    keys = compare.choose_models(args.models, compare.ARCHITECTURES)
    ref = train.resolve_settings(compare.run_argv(keys[0], 0, args.out_dir, rest, args.iters))[0]
    if args.sweep.removeprefix("--").startswith("block_size=") and not args.tokens_per_step:
        args.tokens_per_step = ref["batch_size"] * ref["gradient_accumulation_steps"] * ref["block_size"]
    args.lr_grids = {}
    args.option, values = parse_sweep(p, args, rest)
    if args.baseline and args.baseline not in keys:
        p.error(f"--baseline {args.baseline}: not among --models {','.join(keys)}")
    reusable = compare.reusable_runs(args.reuse)
    for key in keys:  # every run's command line checked before any training
        for value in values:
            train.resolve_settings(point_argv(key, 0, value, None, args, rest))
    probes = picked = None
    if args.tune_lr:
        points, probes, picked = tuned_runs(keys, values, args, rest, reusable)
    else:
        points = plain_runs(keys, values, args, rest, reusable)
    return report(argv, args, ref, values, points, probes, picked)


def plot_title(option, settings, budget, args):
    """The plot's title: what is swept, and the settings that every run shares."""
    shown = lambda name: name != option and not isinstance(settings.get(name), dict)  # the same in every run
    length = (f"{budget['tokens']:,} tokens per run (max_iters x {option} fixed)" if budget else
              f"{settings['max_iters']} steps" if shown("max_iters") else "")
    return ", ".join(part for part in (
        f"Against {option}. {settings['preset']} preset: {settings['dataset']}",
        f"{settings['n_layer']} layers" if shown("n_layer") else "", f"width {settings['n_embd']}" if shown("n_embd")
        else "", f"{args.tokens_per_step} tokens per step" if option == "block_size" else "", length,
        f"{args.seeds} seed{'s' * (args.seeds > 1)}", "each point's LR tuned" if args.tune_lr else "")
        if part)


def report(argv, args, ref, values, points, probes, picked):
    """Write sweep.png, results.md and results.json into --out_dir from the runs; returns the results."""
    option, keys = args.option, list(points)
    budget = dict(reference=ref[option], max_iters=ref["max_iters"], tokens=ref["max_iters"] * ref["batch_size"]
                  * ref["gradient_accumulation_steps"] * ref["block_size"]) if option in TOKEN_BUDGET_OPTIONS else None
    models = summarize(points)
    by_value = speedups(points, values, args.baseline) if len(keys) > 1 and option != "learning_rate" else None
    x_of = {v: tokens_per_parameter(points, v) for v in values} if option == "max_iters" else \
        x_positions(option, values)[0]
    settings = sweep_settings(points, option)
    runs = [(key, value, r) for key, by_value_ in points.items() for value, rs in by_value_.items() for r in rs]
    if picked:  # the probes that were not picked are results too
        runs += [(key, value, r) for key in keys for value in values for lr, r in probes[key][value].items()
                 if lr != picked[key][value]]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(option, models, by_value, x_of, out_dir / "sweep.png", args.log_x, plot_title(option, settings, budget, args))
    command = "python -m experiments.sweep " + shlex.join(argv)
    extra = dict(budget=budget, speedups=by_value, points=points, tokens_per_step=args.tokens_per_step,
                 probes=probes, picked=picked, lr_grids=args.lr_grids)
    table = markdown(option, models, extra, settings, [run for run in runs if run[2]["diverged"]], command)
    (out_dir / "results.md").write_text(table)
    # every LR tried at seed 0 with its final loss, {key: {value: {lr: loss}}}
    lr_probes = {key: {value: {f"{lr:g}": r["final_val_loss"] for lr, r in tried.items()}
                       for value, tried in by_value_.items()} for key, by_value_ in probes.items()} if probes else None
    results = dict(command=command, option=option, values=values, token_budget=budget,
                   tokens_per_step=args.tokens_per_step, settings=settings, models=models, speedups=by_value,
                   picked_lr=picked, lr_grids=args.lr_grids, lr_probes=lr_probes,
                   runs=[dict(key=key, value=value, **{k: v for k, v in r.items() if k != "config"})
                         for key, value, r in runs])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:5 + len(values)]))  # the table
    print(f"wrote {out_dir / 'sweep.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    train.run_main(main, "experiments.sweep")
