"""
Length extrapolation (nGPT paper, the appendix on it): does a model trained on a context of T tokens still predict
well on windows of 2T, 4T, 8T? nGPT's loss stays flat, where GPT's blows up. This evaluates the checkpoints of
finished train.py runs (here of `python compare.py`) on fixed validation windows of 1x, 2x, 4x and 8x their training
context, over all positions and over those past the training length only:
$ python -m experiments.extrapolate --runs compare_out/runs --out_dir compare_out/length

Other multiples, more windows per context, another device:
$ python -m experiments.extrapolate --runs compare_out/runs --factors 1,2,16 --windows 256 --device cuda

Every model sees the same windows (drawn with one seed from its dataset's validation split), evaluated whole, in
fp32, without gradients. A context a model cannot take (a learned position table, too little validation data) is
reported as refused, in one line, and the others still run.

Writes into --out_dir (default extrapolate_out/): extrapolation.png (val loss against the context, both ways),
results.md (the tables, the settings and the command line) and results.json (every checkpoint's losses).
"""

import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import compare
import prepare_data
import train
from compare import COLORS, VARIANTS, label, mark_at_top, room_at_top, save_with_legend_below
from train import ConfigError

FACTORS = "1,2,4,8"  # multiples of the training context
WINDOWS = 64  # validation windows per context: the same for every checkpoint
WINDOW_SEED = 12345
TOKENS_PER_FORWARD = 8192  # windows per forward pass: the logits are (windows, T, vocab), at most this many rows


# -----------------------------------------------------------------------------
# The validation loss of trained checkpoints on windows longer than their training context

def position_limit(model):
    """The longest sequence the model's positional encoding can take: None for any length (RoPE, whose tables
    Model.rope_tables computes for any length in all three model files), else the length of a learned position
    table (nanoGPT's wpe), which has nothing for positions past the training context."""
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    return wpe.num_embeddings if isinstance(wpe, torch.nn.Embedding) else None


@torch.no_grad()
def context_loss(model, x, y, train_len, device):
    """The mean next-token loss over all positions of the windows, and over the positions at and past
    `train_len` only (positions the model never saw in training), in fp32."""
    sums = torch.zeros(2, dtype=torch.float64)  # (all positions, positions >= train_len)
    rows = max(1, TOKENS_PER_FORWARD // x.size(1))  # windows per forward pass: the logits are (rows, T, vocab)
    for i in range(0, len(x), rows):
        xb, yb = x[i:i + rows].to(device), y[i:i + rows].to(device)
        logits, _ = model(xb, yb)
        losses = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape)  # (B, T)
        sums += torch.stack((losses.sum(), losses[:, train_len:].sum())).double().cpu()
    beyond = x.size(0) * (x.size(1) - train_len)
    return dict(loss=(sums[0] / x.numel()).item(), loss_beyond=(sums[1] / beyond).item() if beyond > 0 else None)


def extrapolation_losses(model, tokens, factors, count, device):
    """{factor: losses on `count` windows of factor x the training context}; a context that cannot be evaluated
    gets {refused: why} in one line instead, and the others still run."""
    train_len = model.config.block_size
    limit = position_limit(model)
    out = {}
    for factor in factors:
        length = factor * train_len
        entry = dict(context=length)
        if limit is not None and length > limit:
            entry["refused"] = (f"its learned position table has {limit} positions, so it cannot go past its "
                                f"training length")
        elif len(tokens) < length + 1:
            entry["refused"] = (f"the validation split has {len(tokens):,} tokens, too few for one window of "
                                f"{length:,} ({length + 1:,} with its next-token target)")
        else:
            try:
                windows = train.token_windows(tokens, length, count, WINDOW_SEED)  # the same for every model
                losses = context_loss(model, *windows, train_len, device)
                if not math.isfinite(losses["loss"]):
                    raise ValueError(f"the loss is {losses['loss']}")
                entry.update(losses)
            except (RuntimeError, IndexError, ValueError) as e:  # out of memory, an encoding that breaks, ...
                entry["refused"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        if "refused" in entry:
            print(f"  {factor}x ({length} tokens): cannot be evaluated: {entry['refused']}")
        else:
            beyond = entry["loss_beyond"]
            print(f"  {factor}x ({length} tokens): val loss {entry['loss']:.4f}"
                  + (f", past the training length {beyond:.4f}" if beyond is not None else ""))
        out[factor] = entry
    return out


def evaluate_checkpoint(path, factors, count, device, data_dir=None, keys=None):
    """One checkpoint's extrapolation_losses on its own dataset's validation split, with what it is; None if its
    model is not one of `keys`."""
    model, ckpt = train.load_trained_model(path, device)
    key = compare.variant_of(ckpt["settings"])
    if keys and key not in keys:
        return None
    model.to(dtype=torch.float32)
    settings = ckpt["settings"]
    folder = Path(data_dir or settings["data_dir"]) / settings["dataset"]
    if not prepare_data.has_tokens(folder):
        raise ConfigError(f"{path}: no validation tokens in {folder} to evaluate on; prepare the dataset "
                          f"{settings['dataset']} or point --data_dir at it")
    tokens = prepare_data.read_tokens(folder, "val")
    if tokens.max() >= model.config.vocab_size:
        raise ConfigError(f"the validation split in {folder} holds token id {tokens.max()}, but {path} has a "
                          f"vocabulary of {model.config.vocab_size}: other data than it was trained on")
    limit, rope = position_limit(model), ckpt["model_config"].get("rope", "standard")  # anGPT's is standard alone
    positions = f"a learned table of {limit} positions" if limit else f"RoPE ({rope}), computed for any length"
    print(f"=== {label(key)} {path.parent} (step {ckpt.get('iter_num')}, context {model.config.block_size})")
    return dict(key=key, seed=settings.get("seed"), dir=str(path.parent), step=ckpt.get("iter_num"),
                dataset=settings["dataset"], block_size=model.config.block_size, positions=positions,
                contexts=extrapolation_losses(model, tokens, factors, count, device))


def summarize(evaluations, factors):
    """{key: {factor: mean, std, min and max over the model's checkpoints}} of both losses, and the refusals."""
    models = {}
    keys = [k for k in VARIANTS if any(e["key"] == k for e in evaluations)]
    keys += sorted({e["key"] for e in evaluations} - set(keys))
    for key in keys:
        mine = sorted((e for e in evaluations if e["key"] == key), key=lambda e: (e["seed"] is None, e["seed"]))
        contexts = {}
        for factor in factors:
            entries = [e["contexts"][factor] for e in mine]
            done = [c for c in entries if "refused" not in c]
            agg = dict(context=sorted({c["context"] for c in entries}), evaluated=len(done),
                       refused=len(entries) - len(done))
            for field in ("loss", "loss_beyond"):
                values = [c[field] for c in done if c[field] is not None]
                agg[field] = dict(mean=float(np.mean(values)), lo=min(values), hi=max(values),
                                  std=float(np.std(values, ddof=1)) if len(values) > 1 else None) if values else None
            contexts[factor] = agg
        models[key] = dict(label=label(key), seeds=[e["seed"] for e in mine],
                           block_size=sorted({e["block_size"] for e in mine}),
                           positions=sorted({e["positions"] for e in mine}), contexts=contexts)
    return models


# -----------------------------------------------------------------------------
# Outputs

def plot(models, factors, path, title):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    fig, axes = compare.pyplot().subplots(1, 2, figsize=(14, 5.6), sharey=True)
    panels = [("loss", "all positions"), ("loss_beyond", "positions past the training length only")]
    block_sizes = {b for m in models.values() for b in m["block_size"]}
    for ax, (field, name) in zip(axes, panels):
        for row, (key, m) in enumerate(models.items()):
            color = COLORS.get(key)
            done = [f for f in factors if m["contexts"][f][field] is not None]
            losses = [m["contexts"][f][field] for f in done]
            ax.plot(done, [l["mean"] for l in losses], "o-", color=color, lw=2, label=m["label"])
            if len(m["seeds"]) > 1:
                ax.fill_between(done, [l["lo"] for l in losses], [l["hi"] for l in losses], color=color,
                                alpha=0.2, lw=0)
            refused = [f for f in factors if m["contexts"][f]["refused"] and (field == "loss" or f > 1)]
            mark_at_top(ax, refused, row, color)
        ax.axvline(1, color="gray", ls=":", lw=1)  # the training context
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        only = next(iter(block_sizes)) if len(block_sizes) == 1 else None
        ax.set_xticks(factors, [f"{f}x" + (f"\n{f * only}" if only else "") for f in factors])
        ax.set_xlabel("evaluation context, in multiples of the training context" + (" and in tokens" if only else ""))
        ax.set_title(f"val loss over {name}")
        ax.grid(alpha=0.3)
    losses = [c[field][k] for m in models.values() for c in m["contexts"].values() for field in ("loss", "loss_beyond")
              if c[field] for k in ("lo", "hi")]
    if losses and max(losses) > 3 * min(losses):  # a model that blows up would flatten the others on a linear axis
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # within a decade the minor ticks (2, 3, 5, ...) are the only labels; over several they would overlap
        few_decades = max(losses) < 10 * min(losses)
        axes[0].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}") if few_decades else NullFormatter())
    refused = any(c["refused"] for m in models.values() for c in m["contexts"].values())
    if refused:
        room_at_top(axes[0], len(models))  # the y-axis is shared
    axes[0].set_ylabel("validation loss" + (" (log scale)" if axes[0].get_yscale() == "log" else ""))
    handles, _ = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="gray", ls=":", label="training context"))
    if refused:
        handles.append(Line2D([], [], color="gray", marker="x", ls="", mew=2, label="cannot be evaluated (at the top)"))
    save_with_legend_below(fig, handles, any(len(m["seeds"]) > 1 for m in models.values()), title, path)


def markdown(models, factors, evaluations, windows, device, command):
    block_sizes = {b for m in models.values() for b in m["block_size"]}
    only = next(iter(block_sizes)) if len(block_sizes) == 1 else None
    n_seeds = max(len(m["seeds"]) for m in models.values())
    header = ["| context | " + " | ".join(m["label"] for m in models.values()) + " |", "|---|" + "---|" * len(models)]
    lines = ["# Length extrapolation: " + ", ".join(m["label"] for m in models.values()), ""]
    for field, name in (("loss", "Val loss over all positions"),
                        ("loss_beyond", "Val loss on the positions past the training length only")):
        if field == "loss_beyond" and max(factors) <= 1:
            continue
        lines += [f"## {name}", "", *header]
        for factor in factors:
            if field == "loss_beyond" and factor <= 1:
                continue
            cells = []
            for m in models.values():
                c = m["contexts"][factor]
                if c[field] is None:
                    cells.append("refused")
                    continue
                some = f" ({c['refused']} of {c['refused'] + c['evaluated']} refused)" if c["refused"] else ""
                cells.append(compare.mean_std(c[field]["mean"], c[field]["std"]) + some)
            lines.append(f"| {factor}x" + (f" ({factor * only})" if only else "") + " | " + " | ".join(cells) + " |")
        lines.append("")
    spread = f"mean ± std over {n_seeds} checkpoints (seeds)" if n_seeds > 1 else "one checkpoint per model"
    lines += [f"Next-token loss on the same {windows} validation windows per context for every model ({spread}), "
              "drawn at random starts with a fixed seed; each window is evaluated whole, in fp32 without gradients. "
              "All positions: the mean over every position of the window. Past the training length: the mean over "
              "the positions the model never saw in training only, where a positional encoding that does not "
              "extrapolate shows first.", ""]
    refused = [(e, f) for e in evaluations for f in factors if "refused" in e["contexts"][f]]
    if refused:
        lines += ["## Contexts that cannot be evaluated", ""] + [
            f"- {label(e['key'])} ({e['dir']}) at {f}x ({c['context']:,} tokens): {c['refused']}"
            for e, f in refused for c in [e["contexts"][f]]] + [""]
    lines += ["## Settings", ""]
    lines += ["- checkpoints: " + "; ".join(f"{label(e['key'])} {e['dir']} (step {e['step']}, context "
                                            f"{e['block_size']})" for e in evaluations),
              "- positional encoding: " + "; ".join(f"{m['label']}: {' / '.join(m['positions'])}"
                                                    for m in models.values()),
              f"- dataset: {', '.join(sorted({e['dataset'] for e in evaluations}))}, validation split",
              f"- windows per context: {windows} (seed {WINDOW_SEED}), at most {TOKENS_PER_FORWARD} tokens per "
              f"forward pass",
              f"- device: {device}, float32",
              "", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# The command line

def main(argv=None):
    """Evaluate the checkpoints, then write extrapolation.png, results.md and results.json."""
    argv = sys.argv[1:] if argv is None else argv
    p = train.Parser(prog="experiments.extrapolate", description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    p.add_argument("--runs", nargs="+", required=True, help="train.py run folders (with a ckpt.pt), or folders of them")
    p.add_argument("--factors", default=FACTORS, help=f"multiples of the training context (default: {FACTORS})")
    p.add_argument("--windows", type=int, default=WINDOWS, help=f"validation windows per context (default: {WINDOWS})")
    p.add_argument("--models", default=None, help=f"comma-separated, of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available, else cpu")
    p.add_argument("--data_dir", default=None, help="where the datasets are (default: each run's own)")
    p.add_argument("--out_dir", default="extrapolate_out", help="default: extrapolate_out")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    command = "python -m experiments.extrapolate " + shlex.join(argv)
    try:
        factors = sorted({int(f) for f in args.factors.split(",")})
    except ValueError:
        factors = []
    if not factors or factors[0] < 1:
        p.error(f"--factors {args.factors}: expected multiples of the training context such as 1,2,4,8")
    if args.windows < 1:
        p.error(f"--windows must be at least 1, got {args.windows}")

    keys = args.models.split(",") if args.models else None
    evaluations = [evaluate_checkpoint(path, factors, args.windows, args.device, args.data_dir, keys)
                   for path in [f / "ckpt.pt" for f in compare.run_folders(args.runs, holding="ckpt.pt")]]
    evaluations = [e for e in evaluations if e is not None]
    if not evaluations:
        raise ConfigError("no checkpoints to evaluate")
    order = list(VARIANTS)
    evaluations.sort(key=lambda e: (order.index(e["key"]) if e["key"] in order else len(order), e["key"], e["dir"]))
    models = summarize(evaluations, factors)
    n_seeds = max(len(m["seeds"]) for m in models.values())
    contexts = sorted({b for m in models.values() for b in m["block_size"]})
    title = (f"Length extrapolation: val loss on {args.windows} windows per context, trained on a context "
             f"of {', '.join(map(str, contexts))} tokens, {n_seeds} checkpoint{'s' * (n_seeds > 1)} per model")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(models, factors, out_dir / "extrapolation.png", title)
    table = markdown(models, factors, evaluations, args.windows, args.device, command)
    (out_dir / "results.md").write_text(table)
    results = dict(command=command, factors=factors, windows=args.windows, seed=WINDOW_SEED,
                   device=args.device, models=models, checkpoints=evaluations)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print("\n".join(table.splitlines()[2:6 + len(factors)]))  # the table over all positions
    print(f"wrote {out_dir / 'extrapolation.png'}, {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    train.run_main(main, "experiments.extrapolate")
