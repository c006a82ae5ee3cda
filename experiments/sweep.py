"""
Which values of a train.py option does each model tolerate? One run per model, value and seed, every model at the
same values; the final val loss against the value, a diverged run marked as such. Both papers claim that normalized
models tolerate a wider range of learning rates, and the anGPT paper that anGPT trains well at larger batches.

Every model at the same learning rates (--models, --seeds, --iters and any train.py option as in compare.py):
$ python -m experiments.sweep --sweep learning_rate=1e-3,2e-3,4e-3,8e-3 --seeds 1 --iters 1000 --out_dir results/lr

Values written xK are K times each model's own: its recipe's learning rate, tuned anew around it:
$ python -m experiments.sweep --sweep learning_rate=x0.25,x0.5,x1,x2,x4 --seeds 1 --out_dir sweep_out/lr_tuning

A batch size (or gradient_accumulation_steps) keeps the token budget: max_iters x value is fixed, and eval_interval,
eval_iters and warmup_iters are scaled with max_iters. Any other option is swept as it is (--sweep n_layer=2,4,8):
$ python -m experiments.sweep --sweep batch_size=12,24,48 --seeds 1 --iters 500 --out_dir results/batch

Writes into --out_dir (default sweep_out/): sweep.png (final val loss against the value, min-max band over seeds),
results.md (rows: values, columns: models), results.json and sweep/<model>-<option><value>-s<seed>/, the runs. A
run that train.py stopped on a non-finite loss gets a diverged.txt, so that the same command again reuses it too.
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

LOG_X_OPTIONS = ("learning_rate", "min_lr", "batch_size", "gradient_accumulation_steps")  # plotted on a log axis
TOKEN_BUDGET_OPTIONS = ("batch_size", "gradient_accumulation_steps")  # swept at a fixed token budget
RISE_FRACTION = 0.5  # a run whose val loss climbs back more than this part of what it had gained has diverged
NEAR_BEST = 0.02  # the values whose final loss is within 2% of a model's best are "near the best"


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

def sweep_argv(key, seed, option, value, args, rest):
    """The train.py command line of one run: the value as given, xK as K times the model's own, and a batch size at
    the token budget of max_iters steps at the preset's batch size (max_iters, and the eval and warmup steps with
    it, scaled by the preset's value / value; later options win over the user's)."""
    ref = train.resolve_settings(compare.run_argv(key, seed, args.out_dir, rest, args.iters))[0]
    folder = Path(args.out_dir) / "sweep" / f"{key}-{option}{value}-s{seed}"
    if value.startswith("x"):
        value = str(type(ref[option])(float(value[1:]) * ref[option]))
    extra, iters = [f"--{option}", value], args.iters
    if option in TOKEN_BUDGET_OPTIONS:
        scale = ref[option] / int(value)
        iters = max(1, round(ref["max_iters"] * scale))
        # eval_iters too, so that every point is evaluated on about as many validation sequences
        for name, least in (("eval_interval", 1), ("eval_iters", 1), ("warmup_iters", 0)):
            extra += [f"--{name}", str(max(least, round(ref[name] * scale)))]
    return compare.run_argv(key, seed, folder, [*rest, *extra], iters)


def sweep_point(argv, title):
    """Train one run of the sweep (or reuse it) and read it back, with why it diverged (None if it did not)."""
    s = train.resolve_settings(argv)[0]
    folder = Path(s["out_dir"])
    marker = folder / "diverged.txt"
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
# The plot and the table

def plot(option, models, path, log_x, title):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator

    values = list(next(iter(models.values()))["points"])
    numeric = all(is_number(v) for v in values)
    x_of = {v: float(v.removeprefix("x")) if numeric else i for i, v in enumerate(values)}  # words side by side
    fig, ax = compare.pyplot().subplots(figsize=(9, 6))
    for row, (key, m) in enumerate(models.items()):
        color, points = compare.COLORS.get(key), m["points"]
        done = [v for v in values if points[v]["mean"] is not None]
        x = [x_of[v] for v in done]
        ax.plot(x, [points[v]["mean"] for v in done], "o-", color=color, lw=2, label=m["label"])
        if any(len(points[v]["seeds"]) > 1 for v in done):
            ax.fill_between(x, [points[v]["lo"] for v in done], [points[v]["hi"] for v in done], color=color,
                            alpha=0.2, lw=0)
        compare.mark_at_top(ax, [x_of[v] for v in values if points[v]["diverged"]], row, color)
    diverged = any(p["diverged"] for m in models.values() for p in m["points"].values())
    if diverged:
        compare.room_at_top(ax, len(models))
    if log_x or (numeric and option in LOG_X_OPTIONS and min(x_of.values()) > 0):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([x_of[v] for v in values], values)  # the values as given on the command line
    ax.set_xlabel(option)
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if diverged:
        handles.append(Line2D([], [], color="gray", marker="x", ls="", mew=2, label="diverged (at the top)"))
    several = any(len(p["seeds"]) > 1 for m in models.values() for p in m["points"].values())
    # a long title (a token budget, many settings) on two lines
    compare.save_with_legend_below(fig, handles, several, textwrap.fill(title, 90), path, bottom=0.06)


def markdown(option, models, budget, settings, diverged_runs, command):
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
                cell = compare.mean_std(point["mean"], point["std"])
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
        lines += ["## Diverged runs", ""] + [f"- {compare.label(key)}, {option} {value}, seed {r['seed']}: {r['diverged']}"
                                             for key, value, r in diverged_runs] + [""]
    lines += ["## Settings", ""]
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{who}: {v}" for who, v in value.items())
        lines.append(f"- {name}: {value}")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = compare.script_parser("experiments.sweep", __doc__, "sweep_out")
    p.add_argument("--sweep", required=True, metavar="OPTION=V1,V2,...", help="the train.py option and its values")
    p.add_argument("--log-x", "--log_x", action="store_true", help="a log-scaled x axis")
    args, rest = p.parse_known_args(argv)
    option, _, text = args.sweep.removeprefix("--").partition("=")
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not option or not values:
        p.error(f"--sweep {args.sweep}: expected OPTION=V1,V2,..., e.g. --sweep learning_rate=1e-3,2e-3,4e-3")
    if f"--{option}" not in [o for action in train.build_parser()._actions for o in action.option_strings]:
        p.error(f"--sweep {option}: not an option of train.py")
    if f"--{option}" in compare.OWN_OPTIONS or any(a == f"--{option}" or a.startswith(f"--{option}=") for a in rest):
        p.error(f"--sweep {option}: give its values here only")
    if option in TOKEN_BUDGET_OPTIONS and not all(v.isdigit() and int(v) > 0 for v in values):
        p.error(f"--sweep {option}: the values must be positive integers, got {','.join(values)}")
    if all(is_number(v) for v in values):
        values.sort(key=lambda v: float(v.removeprefix("x")))
    keys = compare.choose_models(args.models, compare.ARCHITECTURES)
    # every run's command line, checked before any training; interleaved: seed 0 at every value, then seed 1, ...
    argvs = {(seed, value, key): sweep_argv(key, seed, option, value, args, rest)
             for seed in range(args.seeds) for value in values for key in keys}
    points = {key: {value: [] for value in values} for key in keys}
    for n, ((seed, value, key), run) in enumerate(argvs.items(), 1):
        title = f"[{n}/{len(argvs)}] {compare.label(key)} {option} {value} seed {seed}"
        points[key][value].append(sweep_point(run, title))

    ref = train.resolve_settings(compare.run_argv(keys[0], 0, args.out_dir, rest, args.iters))[0]
    budget = dict(reference=ref[option], max_iters=ref["max_iters"], tokens=ref["max_iters"] * ref["batch_size"]
                  * ref["gradient_accumulation_steps"] * ref["block_size"]) if option in TOKEN_BUDGET_OPTIONS else None
    models = summarize(points)
    settings = sweep_settings(points, option)
    runs = [(key, value, r) for key, by_value in points.items() for value, rs in by_value.items() for r in rs]
    length = (f"{budget['tokens']:,} tokens per run (max_iters x {option} fixed)" if budget else
              f"{settings['max_iters']} steps" if not isinstance(settings["max_iters"], dict) else "steps per run vary")
    title = (f"Final val loss against {option}. {settings['preset']} preset: {settings['dataset']}, "
             f"{settings['n_layer']} layers, width {settings['n_embd']}, {length}, "
             f"{args.seeds} seed{'s' * (args.seeds > 1)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(option, models, out_dir / "sweep.png", args.log_x, title)
    command = "python -m experiments.sweep " + shlex.join(argv)
    table = markdown(option, models, budget, settings, [run for run in runs if run[2]["diverged"]], command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, option=option, values=values, token_budget=budget, settings=settings,
                   models=models, runs=[dict(key=key, value=value, **{k: v for k, v in r.items() if k != "config"})
                                        for key, value, r in runs])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:5 + len(values)]))  # the table
    print(f"wrote {out_dir / 'sweep.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    train.run_main(main, "experiments.sweep")
