"""
Does the speedup grow with the context length, as the nGPT paper finds (nGPT over GPT: 4x fewer steps to the same
loss at 1k, 10x at 4k, 20x at 8k)? Every model at each context with the same tokens per step (the batch size is
tokens / context), the same steps and its own recipe; per context the final losses, the steps to each model's
baseline and the speedups of compare.py (--models, --seeds, --iters, --baseline and any train.py option as there):
$ python -m experiments.contexts --contexts 64,256,1024 --tokens-per-step 1024 --seeds 2 --iters 1000 \
    --out_dir contexts_out

With --eval_iters fixed, every context evaluates the same number of tokens (fewer, longer windows).
Writes into --out_dir (default contexts_out/): contexts.png (each model's speedup against the context, with the
paper's points), results.md (rows: models, columns: contexts), results.json and runs/<model>-T<context>-s<seed>/.
"""

import json
import math
import shlex
import sys
import textwrap
from pathlib import Path

import compare
import train

# the nGPT paper's speedups of nGPT over GPT in steps to the same loss, by context (0.5B and 1B parameters,
# OpenWebText)
PAPER_CONTEXT_SPEEDUPS = {1024: 4, 4096: 10, 8192: 20}
TOKENS_PER_STEP = 1024


def context_argv(key, seed, context, args, rest):
    """One run's train.py command line: this context, and as many sequences per step as make --tokens-per-step."""
    extra = ["--block_size", str(context), "--batch_size", str(args.tokens_per_step // context),
             "--gradient_accumulation_steps", "1"]
    return compare.run_argv(key, seed, Path(args.out_dir) / "runs" / f"{key}-T{context}-s{seed}", [*rest, *extra],
                            args.iters)


def plot(by_context, path, title):
    """Each model's speedup over its baseline against the context, log x, with the nGPT paper's points."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    plt = compare.pyplot()

    contexts = list(by_context)
    fig, ax = plt.subplots(figsize=(9, 5.6))
    for key, m in by_context[contexts[0]].items():
        if m["baseline"] == key:
            continue  # a baseline's speedup over itself is 1 by definition
        speedups = [by_context[c][key]["speedup"] for c in contexts]
        # a context where the baseline's loss is not reached has no speedup: the line breaks there (NaN)
        ax.plot(contexts, [math.nan if v is None else v for v in speedups], "o-", color=compare.COLORS.get(key), lw=2,
                label=f"{m['label']} vs {by_context[contexts[0]][m['baseline']]['label']}")
        compare.mark_at_top(ax, [c for c, v in zip(contexts, speedups) if v is None], 0, compare.COLORS.get(key))
    paper = sorted(PAPER_CONTEXT_SPEEDUPS.items())
    ax.plot(*zip(*paper), "s--", color="gray", lw=1.5, label="nGPT vs GPT, nGPT paper (0.5-1B parameters, OpenWebText)")
    ax.axhline(1, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = sorted(set(contexts) | set(PAPER_CONTEXT_SPEEDUPS))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
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


def markdown(by_context, tokens_per_step, settings, command):
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
              f"tokens. The nGPT paper's nGPT over GPT: {paper} (0.5B and 1B parameters, OpenWebText).", ""]
    lines += compare.settings_lines(settings, skip=("block_size", "batch_size"))  # by context: in the table's header
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = compare.script_parser("experiments.contexts", __doc__, "contexts_out")
    p.add_argument("--contexts", required=True, metavar="T1,T2,...", help="the context lengths")
    p.add_argument("--tokens-per-step", "--tokens_per_step", type=int, default=TOKENS_PER_STEP,
                   help=f"tokens per step at every context (default: {TOKENS_PER_STEP})")
    p.add_argument("--baseline", help="one baseline for all models (default: the papers')")
    args, rest = p.parse_known_args(argv)
    for option in ("--block_size", "--batch_size", "--gradient_accumulation_steps"):
        if any(a == option or a.startswith(option + "=") for a in rest):
            p.error(f"{option} is set by --contexts and --tokens-per-step")
    contexts = sorted({int(c) for c in args.contexts.split(",") if c.isdigit()})
    if not contexts or contexts[0] < 1 or any(args.tokens_per_step % c for c in contexts):
        p.error(f"--contexts {args.contexts}: expected context lengths that divide --tokens-per-step "
                f"{args.tokens_per_step}, such as 64,256,1024")
    keys = compare.choose_models(args.models, compare.ARCHITECTURES)
    # every run's command line, checked before any training; interleaved: seed 0 at every context, then seed 1, ...
    argvs = {(seed, context, key): context_argv(key, seed, context, args, rest)
             for seed in range(args.seeds) for context in contexts for key in keys}
    runs = {c: [] for c in contexts}
    for n, ((seed, context, key), run) in enumerate(argvs.items(), 1):
        compare.train_run(run, f"[{n}/{len(argvs)}] {compare.label(key)} context {context} seed {seed}")
        runs[context].append(compare.read_run(train.resolve_settings(run)[0]["out_dir"]))

    by_context = {c: compare.summarize(runs[c], args.baseline) for c in contexts}
    settings = compare.settings_of(runs[contexts[0]], by_context[contexts[0]])
    n_seeds = max(len(m["seeds"]) for m in by_context[contexts[0]].values())
    title = (f"Speedup against context length, the same {args.tokens_per_step} tokens per step at every context. "
             f"{settings['preset']} preset: {settings['dataset']}, {settings['n_layer']} layers, width "
             f"{settings['n_embd']}, {settings['max_iters']} steps, {n_seeds} seed{'s' * (n_seeds > 1)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(by_context, out_dir / "contexts.png", title)
    command = "python -m experiments.contexts " + shlex.join(argv)
    table = markdown(by_context, args.tokens_per_step, settings, command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, contexts=contexts, tokens_per_step=args.tokens_per_step, settings=settings,
                   models=by_context,
                   runs=[{k: v for k, v in r.items() if k != "config"} for c in contexts for r in runs[c]])
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:4 + len(keys)]))
    print(f"wrote {out_dir / 'contexts.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    train.run_main(main, "experiments.contexts")
