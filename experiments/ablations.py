"""
Ablations: take each part of nGPT and anGPT out, one switch at a time, and see what it was worth on the CPU preset,
beside the papers' own tables (anGPT paper, Table L.1 and sec. 4.2 on warmup; nGPT paper, Tables 4 to 6, at 0.5B
parameters). And the parameter storage behind NVIDIA's note on its baseline: GPT, GPT+ and nGPT with the block
matrices stored and stepped in bf16 against fp32, and nGPT's speedup over GPT in each.

Every switch is a model option whose default is the full model (see each model file), so any row is one train.py
command. The whole table (--seeds, --iters and any train.py option as in compare.py):
$ python -m experiments.ablations --out_dir results/ablations

--tables angpt,ngpt,dtype chooses the tables (default: all three), --rows some of their rows by name (each table's
full model is always run: the others are measured against it). A row whose paper effect is above 1% (or NaN),
the full models and the warmup and dtype rows get --seeds seeds (default 3); the others --small_seeds (default 1).

Writes into --out_dir (default ablations_out/): results.md (per table: the final val loss, its change relative to
the full model at the same seed with its standard error, "diverged" where a run diverged, beside the paper's
change), ablations.png (the change here beside the paper's, per row), results.json and runs/<row>-s<seed>/, the runs. A
run that train.py stopped on a non-finite loss gets a diverged.txt, so that the same command again reuses it too.
"""

import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np

import compare
import train
from experiments import sweep

# Each row: (name, what it is in the paper's words, VARIANTS key, train.py options, the paper's change of the final
# val loss in %: a number, "NaN" where the paper's run diverged, None where it gives no figure). The first row of a
# table is its full model, which the others are measured against. iters: a factor on the steps (token budget).
ANGPT = [  # anGPT paper, Table L.1 (0.5B parameters, 10B tokens), and sec. 4.2 and App. B on warmup
    ("angpt", "anGPT", "angpt", [], 0.0),
    ("angpt_const_x0.5", "const. norm factor x0.5", "angpt", ["--const_factor_mult", "0.5"], 0.34),
    ("angpt_all_x0.5", "all norm factors x0.5", "angpt",
     ["--const_factor_mult", "0.5", "--residual_factor_mult", "0.5"], 200.0),
    ("angpt_all_x2", "all norm factors x2.0", "angpt", ["--const_factor_mult", "2", "--residual_factor_mult", "2"],
     "NaN"),
    ("angpt_no_const", "no const. norm factors, = const. norm factor x2.0", "angpt", ["--const_factor_mult", "2"],
     1.09),
    ("angpt_no_residual", "no residual norm factor nu(alpha)", "angpt", ["--residual_factor", "false"], 3.04),
    ("angpt_no_factors", "no norm factors", "angpt", ["--const_factor_mult", "2", "--residual_factor", "false"], 3.02),
    ("angpt_no_lerp", "no LERP (h + h_block)", "angpt", ["--lerp", "false"], 1.89),
    ("angpt_no_lerp_nu", "no LERP, (h + h_block)/sqrt(2)", "angpt", ["--lerp", "false", "--no_lerp_nu", "true"], 1.89),
    ("angpt_half_budget", "half token budget", "angpt", [], 4.42, 0.5),
    ("angpt_double_budget", "double token budget", "angpt", [], -2.78, 2),
    ("gpt_qk_f2", "GPT+ for comparison (Table F.2's recipe)", "gpt_qk_f2", [], 1.46),
    ("angpt_warmup", "anGPT with GPT+'s warmup (20%)", "angpt", ["--warmup", "20%"], None),
    ("gpt_qk_f2_no_warmup", "GPT+ without warmup", "gpt_qk_f2", ["--warmup", "0"], None),
]
NGPT = [  # nGPT paper, Table 4 (s_init, s_scale), Table 5 (vectors as learned scalars or fixed values), Table 6
    ("ngpt", "nGPT", "ngpt", [], 0.0),
    ("ngpt_sqk_0.33", "s_qk init 0.33, scale 1/sqrt(d)", "ngpt", ["--s_qk_init", "0.33"], -0.33),
    ("ngpt_sqk_0.05", "s_qk init 0.05, scale 1/sqrt(d)", "ngpt", ["--s_qk_init", "0.05"], -0.09),
    ("ngpt_sqk_1_1", "s_qk init 1, scale 1", "ngpt", ["--s_qk_scale", "1"], -0.09),
    ("ngpt_sqk_0.33_1", "s_qk init 0.33, scale 1", "ngpt", ["--s_qk_init", "0.33", "--s_qk_scale", "1"], -0.08),
    ("ngpt_sqk_0.05_1", "s_qk init 0.05, scale 1", "ngpt", ["--s_qk_init", "0.05", "--s_qk_scale", "1"], 1.94),
    ("ngpt_suv_d_1", "s_u, s_v init 1/sqrt(d), scale 1", "ngpt", ["--s_uv_init", "1/sqrt(d)"], 0.92),
    ("ngpt_suv_1_d", "s_u, s_v init 1, scale 1/sqrt(d)", "ngpt", ["--s_uv_scale", "1/sqrt(d)"], 0.05),
    ("ngpt_suv_d_d", "s_u, s_v init 1/sqrt(d), scale 1/sqrt(d)", "ngpt",
     ["--s_uv_init", "1/sqrt(d)", "--s_uv_scale", "1/sqrt(d)"], 0.48),
    ("ngpt_sz_sqrtd", "s_z init sqrt(d), scale 1/sqrt(d)", "ngpt", ["--s_z_init", "sqrt(d)"], 1.06),
    ("ngpt_sz_1_1", "s_z init 1, scale 1", "ngpt", ["--s_z_scale", "1"], 3.12),
    ("ngpt_sz_sqrtd_1", "s_z init sqrt(d), scale 1", "ngpt", ["--s_z_init", "sqrt(d)", "--s_z_scale", "1"], 1.66),
    ("ngpt_sqk_scalar", "s_qk a scalar", "ngpt", ["--s_qk_kind", "scalar"], 0.22),
    ("ngpt_suv_scalar", "s_u, s_v a scalar", "ngpt", ["--s_uv_kind", "scalar"], 0.07),
    ("ngpt_sz_scalar", "s_z a scalar", "ngpt", ["--s_z_kind", "scalar"], 0.20),
    ("ngpt_alpha_scalar", "alpha_A, alpha_M scalars", "ngpt", ["--alpha_kind", "scalar"], 0.22),
    ("ngpt_sqk_suv_scalar", "s_qk, s_u, s_v scalars", "ngpt", ["--s_qk_kind", "scalar", "--s_uv_kind", "scalar"],
     0.17),
    ("ngpt_sqk_suv_sz_scalar", "s_qk, s_u, s_v, s_z scalars", "ngpt",
     ["--s_qk_kind", "scalar", "--s_uv_kind", "scalar", "--s_z_kind", "scalar"], 0.30),
    ("ngpt_all_scalar", "s_qk, s_u, s_v, s_z, alpha scalars", "ngpt",
     ["--s_qk_kind", "scalar", "--s_uv_kind", "scalar", "--s_z_kind", "scalar", "--alpha_kind", "scalar"], 0.62),
    ("ngpt_sqk_value", "s_qk fixed at 1", "ngpt", ["--s_qk_kind", "value"], 0.11),
    ("ngpt_suv_value", "s_u, s_v fixed at 1", "ngpt", ["--s_uv_kind", "value"], 0.05),
    ("ngpt_sqk_suv_value", "s_qk, s_u, s_v fixed at 1", "ngpt", ["--s_qk_kind", "value", "--s_uv_kind", "value"],
     0.20),
    ("ngpt_sqk_suv_value_sz_scalar", "s_qk, s_u, s_v fixed at 1, s_z a scalar", "ngpt",
     ["--s_qk_kind", "value", "--s_uv_kind", "value", "--s_z_kind", "scalar"], 0.40),
    ("ngpt_no_qk_norm", "no QK norm (Table 6)", "ngpt", ["--qk_norm", "false"], 0.12),
]
# bf16 autocast in every row, so that only the storage of the block matrices differs
DTYPE = [(f"{key}_{dtype}", f"{compare.label(key)}, {name}", key, ["--dtype", "bfloat16", "--param_dtype", dtype],
          None) for key in ("gpt", "gpt_qk", "ngpt") for dtype, name in (("float32", "fp32 weights"),
                                                                        ("bfloat16", "bf16 weights"))]
TABLES = {"angpt": ANGPT, "ngpt": NGPT, "dtype": DTYPE}
# what a table's rows need said beyond their labels
NOTES = {"angpt": "Table L.1's rows \"no const. norm factors\" and \"const. norm factor x2.0\" (paper +0.12%) are one "
                  "model here: of the constant factors only nu_uz = sqrt(d_model/d_ff) = 1/2 is not followed by a "
                  "norm (the others cancel in it), and x2 makes it 1. \"No norm factors\" is x2.0 without nu(alpha)."}
TITLES = {"angpt": "anGPT: Table L.1 of its paper, and warmup", "ngpt": "nGPT: Tables 4 to 6 of its paper",
          "dtype": "Parameter storage: the block matrices in fp32 or bf16 (bf16 autocast in every run)"}


def row_seeds(row, seeds, small_seeds, table):
    """The seeds of a row: all of them for the full model, for the rows the paper gives above 1% (or NaN) and for
    the warmup and dtype rows, whose effect the paper does not give; one (or --small_seeds) for the others."""
    paper = row[4]
    if table == "dtype" or paper is None or paper == "NaN" or paper == 0.0 or abs(paper) > 1:
        return seeds
    return small_seeds


# -----------------------------------------------------------------------------
# The numbers

def relative_change(finals, full_finals):
    """(change of the final val loss in % of the full model's, its standard error in %), from {seed: final val
    loss}. A seed starts both runs from the same draw and feeds them the same batches, so the change is taken seed
    by seed and averaged: most of the seed-to-seed spread, which both runs share, cancels. A row of one seed is given
    the full model's seed-to-seed spread, for want of its own (None if the full model has one seed too); (None,
    None) when the two share no seed."""
    seeds = sorted(set(finals) & set(full_finals))
    if not seeds:
        return None, None
    changes = [100 * (finals[seed] / full_finals[seed] - 1) for seed in seeds]
    if len(seeds) > 1:
        return float(np.mean(changes)), float(np.std(changes, ddof=1)) / math.sqrt(len(seeds))
    full = list(full_finals.values())
    error = 100 * float(np.std(full, ddof=1) / np.mean(full)) if len(full) > 1 else None
    return changes[0], error


def summarize_table(table, rows, points):
    """One dict per row: its final val losses, the runs that diverged, and its change against the full model: the
    table's first row, or in the dtype table the same model with fp32 weights."""
    finals = lambda name: {p["seed"]: p["final_val_loss"] for p in points.get(name, []) if p["diverged"] is None}
    out = []
    for row in rows:
        name, what, key, options, paper = row[:5]
        reference = f"{key}_float32" if table == "dtype" else rows[0][0]
        full, finite = finals(reference), finals(name)
        losses = list(finite.values())
        diverged = [p["diverged"] for p in points[name] if p["diverged"] is not None]
        change, error = relative_change(finite, full)
        out.append(dict(name=name, label=what, model=key, options=options, paper=paper, reference=reference,
                        iters=row[5] if len(row) > 5 else 1, full_model=rows[0][2],
                        seeds=[p["seed"] for p in points[name]], final_val_loss=losses,
                        final_val_loss_mean=float(np.mean(losses)) if losses else None, diverged=diverged,
                        change=change, change_error=error))
    return out


def dtype_speedups(points):
    """nGPT's speedup over GPT and over GPT+, with fp32 and with bf16 weights: compare.py's steps to the baseline's
    final loss, on the mean curves of the runs."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        runs = [dict(compare.read_run(p["dir"]), key=key) for key in ("gpt", "gpt_qk", "ngpt")
                for p in points.get(f"{key}_{dtype}", []) if p["diverged"] is None]
        models = compare.summarize(runs)
        out[dtype] = {base: models["ngpt"]["vs_baselines"][base]["speedup"] for base in ("gpt", "gpt_qk")
                      if "ngpt" in models and base in models["ngpt"]["vs_baselines"]}
    return out


# -----------------------------------------------------------------------------
# The table and the plot

def fmt_paper(paper):
    return "-" if paper is None else "NaN" if paper == "NaN" else "0" if paper == 0 else f"{paper:+.2f}%"


def markdown(tables, speedups):
    lines = []
    for table, rows in tables.items():
        lines += [f"## {TITLES[table]}", "", "| row | switch | seeds | final val loss | change here | paper |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            losses = " ".join(f"{x:.4f}" for x in r["final_val_loss"])
            loss = f"{r['final_val_loss_mean']:.4f} ({losses})" if len(r["final_val_loss"]) > 1 else losses
            loss += f", {len(r['diverged'])} diverged" if r["diverged"] and r["final_val_loss"] else ""
            loss = loss or "diverged"
            error = "" if r["change_error"] is None else f" +- {r['change_error']:.2f}"
            change = ("-" if r["change"] is None else "0" if r["name"] == r["reference"] else
                      f"{r['change']:+.2f}%{error}")
            switch = "`" + shlex.join(r["options"]) + "`" if r["options"] else ""
            if r["model"] != r["full_model"] and table != "dtype":
                switch = f"{compare.label(r['model'])} {switch}".strip()
            if r["iters"] != 1:
                switch = f"{switch} max_iters x{r['iters']:g}".strip()
            switch = switch or "(the full model)"
            lines.append(f"| {r['label']} | {switch} | {len(r['seeds'])} | {loss} | {change} | "
                         f"{fmt_paper(r['paper'])} |")
        lines += ["", NOTES[table], ""] if table in NOTES else [""]
    if speedups:
        lines += ["nGPT's speedup (steps to the baseline's final loss, mean curves over seeds):", "",
                  "| block matrices | over GPT | over GPT+ |", "|---|---|---|"]
        for dtype, by_base in speedups.items():
            cell = lambda base: "-" if by_base.get(base) is None else f"{by_base[base]:.2f}x"
            lines.append(f"| {dtype} | {cell('gpt')} | {cell('gpt_qk')} |")
        lines.append("")
    lines += ["Change here: the final val loss of the row against the full model's at the same seed (the table's "
              "first row; in the dtype table the same model with fp32 weights), in %, averaged over the seeds, +- "
              "its standard error over the seeds (a row of one seed is given the full model's seed-to-seed spread, "
              "for want of its own). Paper: the "
              "paper's change at 0.5B parameters (anGPT: Table L.1; nGPT: Tables 4 to 6, relative to 2.252).", ""]
    return lines


def plot(tables, path, title):
    """One panel per paper: for each row, the change here (with its standard error) beside the paper's, on a scale
    linear within 1% and logarithmic beyond; a diverged run or a paper's NaN is drawn at the right edge."""
    plt = compare.pyplot()
    shown = [t for t in ("angpt", "ngpt") if t in tables]
    if not shown:
        return
    heights = [len(tables[t]) - 1 for t in shown]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 1.5 + 0.32 * sum(heights)), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    for ax, table in zip(axes[:, 0], shown):
        rows = tables[table][1:]
        finite = [abs(v) for r in rows for v in (r["change"], r["paper"]) if isinstance(v, (int, float))]
        edge = 2 * max(finite + [1])
        y = np.arange(len(rows))
        here = [edge if r["change"] is None else r["change"] for r in rows]
        paper = [edge if r["paper"] == "NaN" else 0 if r["paper"] is None else r["paper"] for r in rows]
        errors = [r["change_error"] or 0 for r in rows]
        ax.barh(y - 0.2, here, height=0.4, xerr=errors, capsize=2, color="#1f77b4", label="here")
        ax.barh(y + 0.2, paper, height=0.4, color="#ff7f0e", label="paper (NaN at the edge)")
        ax.set_yticks(y, [r["label"] + (" (diverged)" if r["diverged"] else "") for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-edge, edge * 1.1)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_xlabel(f"change of the final val loss against {tables[table][0]['label']}, %")
        ax.set_title(TITLES[table])
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# The command line

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = compare.script_parser("experiments.ablations", __doc__, "ablations_out")
    p.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, of {','.join(TABLES)}")
    p.add_argument("--rows", help="comma-separated row names (runs/<row>-s<seed>; default: every row)")
    p.add_argument("--small_seeds", type=int, default=1, help="seeds of the rows the paper gives at 1%% or less")
    args, rest = p.parse_known_args(argv)
    if args.models:
        p.error("--models: the rows are fixed; choose them with --tables and --rows")
    chosen = args.tables.split(",")
    unknown = [t for t in chosen if t not in TABLES]
    if unknown:
        p.error(f"--tables: {', '.join(unknown)} is not one of {', '.join(TABLES)}")
    names = [row[0] for table in chosen for row in TABLES[table]]
    wanted = args.rows.split(",") if args.rows else names
    if set(wanted) - set(names):
        p.error(f"--rows: {', '.join(sorted(set(wanted) - set(names)))} is not a row of {args.tables} "
                f"(rows: {', '.join(names)})")
    selected = {table: [row for i, row in enumerate(TABLES[table]) if i == 0 or row[0] in wanted]
                for table in chosen}
    out_dir = Path(args.out_dir)
    # every run's command line, checked before any training; interleaved: seed 0 of every row, then seed 1, ...
    argvs = {}
    for seed in range(args.seeds):
        for table, rows in selected.items():
            for row in rows:
                if seed < row_seeds(row, args.seeds, args.small_seeds, table):
                    name, _, key, options = row[:4]
                    iters = row[5] if len(row) > 5 else 1
                    steps = round(iters * (args.iters or train.resolve_settings(
                        compare.run_argv(key, seed, out_dir, rest))[0]["max_iters"]))
                    argvs[(name, seed)] = compare.run_argv(key, seed, out_dir / "runs" / f"{name}-s{seed}",
                                                           [*rest, *options], steps)
    points = {row[0]: [] for rows in selected.values() for row in rows}
    reusable = compare.reusable_runs(args.reuse)
    for n, ((name, seed), run) in enumerate(argvs.items(), 1):
        points[name].append(sweep.sweep_point(run, f"[{n}/{len(argvs)}] {name} seed {seed}", reusable))

    tables = {table: summarize_table(table, rows, points) for table, rows in selected.items()}
    speedups = dtype_speedups(points) if "dtype" in chosen else None
    s = train.resolve_settings(compare.run_argv("gpt", 0, out_dir, rest, args.iters))[0]
    title = (f"Ablations. {s['preset']} preset: {s['dataset']}, {s['n_layer']} layers, width {s['n_embd']}, "
             f"{s['max_iters']} steps, up to {args.seeds} seeds")
    command = "python -m experiments.ablations " + shlex.join(argv)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(tables, out_dir / "ablations.png", title)
    lines = [f"# {title}", "", *markdown(tables, speedups), "## Command", "", "```sh", command, "```", ""]
    (out_dir / "results.md").write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(dict(command=command, tables=tables, speedups=speedups),
                                                     indent=1, allow_nan=False) + "\n")
    print("\n".join(lines[2:]))
    print(f"wrote ablations.png, results.md and results.json in {out_dir}")


if __name__ == "__main__":
    train.run_main(main, "experiments.ablations")
