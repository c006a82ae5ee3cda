"""
What does depth do to anGPT's ablations before any training? The anGPT paper's Table L.1 ablates its norm factors
at 24 layers, the CPU preset has 4; every factor acts once per residual step, so a factor that is off by a little
compounds over 2 x n_layer steps. Each row of Table L.1 that changes a factor, at initialization, at several depths:
  - ||h||: the mean norm of the hidden state after the last block, which the factors are meant to keep near 1;
  - the loss on a batch of validation text;
  - the embedding's share: how much of the last hidden state is the token embedding carried along the residual
    path, ||e|| / ||h||, where e is the embedding passed through every residual step with no block output,
    (1 - alpha) nu(alpha) per step (h alone in the plain sum of "no LERP");
  - the gradient norms of the token embedding, of the first block and of the last block.

$ python -m experiments.init_depth --out_dir results/init_depth        # 4 and 24 layers, width 256, heads of 64

Writes into --out_dir (default init_depth_out/): results.md (the table) and results.json.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

import train
from experiments import ablations

# Table L.1's rows that change a norm factor or the residual step (experiments/ablations.py defines them)
ROWS = ("angpt", "angpt_all_x0.5", "angpt_all_x2", "angpt_no_residual", "angpt_no_factors", "angpt_no_const",
        "angpt_no_lerp", "angpt_no_lerp_nu")


def measure(model, x, y):
    """One forward and backward pass at initialization: the numbers of the table."""
    model.zero_grad(set_to_none=True)
    hidden = []
    hook = model.transformer.h[-1].register_forward_hook(lambda module, inputs, output: hidden.append(output))
    _, loss = model(x, y)
    hook.remove()
    loss.backward()
    with torch.no_grad():
        # the embedding along the residual path: each residual step with a block output of zero
        e = model.transformer.wte(x)
        for block in model.transformer.h:
            zero = torch.zeros_like(e)
            e = block.step(block.step(e, zero, block.alpha_attn), zero, block.alpha_mlp)
        h = hidden[0]
        grad_norm = lambda module: torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]
                                             ).norm().item()
        return dict(hidden_norm=h.norm(dim=-1).mean().item(), loss=loss.item(),
                    embedding_share=(e.norm(dim=-1) / h.norm(dim=-1)).mean().item(),
                    grad_embedding=model.transformer.wte.weight.grad.norm().item(),
                    grad_first_block=grad_norm(model.transformer.h[0]),
                    grad_last_block=grad_norm(model.transformer.h[-1]))


def at_init(options, n_layer, args, rest):
    """The measurements of one row at one depth, on --sequences windows of the validation split."""
    s = train.resolve_settings(["--model", "angpt", "--n_layer", str(n_layer), "--n_embd", str(args.n_embd),
                                "--n_head", str(args.n_embd // args.head_size), "--device", "cpu", "--dtype",
                                "float32", "--seed", "0", *rest, *options])[0]
    data = train.Data(s, master=True, ddp=False)
    module = train.MODELS["angpt"]
    config = {f: s[f] for f in module.Config.__dataclass_fields__ if f in s}
    torch.manual_seed(s["seed"])
    model = module.Model(module.Config(**config, vocab_size=data.vocab_size))
    model.after_step()  # as train.py does before the first step
    x, y = data.batch("val", s["seed"], count=args.sequences)
    return measure(model, x, y)


def markdown(rows, depths, command):
    lines = ["# anGPT at initialization: Table L.1's norm factors at depth", "",
             "| row | " + " | ".join(f"{n} layers: ||h||, loss, embedding's share" for n in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for row in rows:
        cells = [f"{m['hidden_norm']:.3g}, {m['loss']:.3g}, {m['embedding_share']:.2g}"
                 for m in (row["depths"][str(n)] for n in depths)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "| row | " + " | ".join(f"{n} layers: gradient norm of the embedding, first block, last block"
                                          for n in depths) + " |", "|---|" + "---|" * len(depths)]
    for row in rows:
        cells = [f"{m['grad_embedding']:.3g}, {m['grad_first_block']:.3g}, {m['grad_last_block']:.3g}"
                 for m in (row["depths"][str(n)] for n in depths)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "||h||: the mean norm of the hidden state after the last block, over the batch's tokens. Embedding's "
              "share: the mean of ||e|| / ||h||, with e the token embedding carried through every residual step with "
              "a block output of zero. Gradient norms: of the loss on the same batch, at initialization.", "",
              "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = train.Parser(prog="experiments.init_depth", description=__doc__.split("\n\n")[0].strip(),
                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False)
    p.add_argument("--depths", default="4,24", help="numbers of layers, comma-separated (default: 4,24)")
    p.add_argument("--n_embd", type=int, default=256, help="width (default: 256)")
    p.add_argument("--head_size", type=int, default=64, help="dimensions per head (default: 64)")
    p.add_argument("--sequences", type=int, default=16, help="validation windows in the batch (default: 16)")
    p.add_argument("--out_dir", default="init_depth_out", help="default: init_depth_out")
    args, rest = p.parse_known_args(argv)
    if not all(d.isdigit() and int(d) > 0 for d in args.depths.split(",")):
        p.error(f"--depths {args.depths}: expected numbers of layers, such as 4,24")
    depths = [int(d) for d in args.depths.split(",")]
    table = {row[0]: row for row in ablations.ANGPT}
    rows = []
    for name in ROWS:
        _, label, _, options = table[name][:4]
        rows.append(dict(name=name, label=label, options=options,
                         depths={str(n): at_init(options, n, args, rest) for n in depths}))
        print(f"{label}: " + "; ".join(f"{n} layers ||h|| {m['hidden_norm']:.3g}, loss {m['loss']:.3g}"
                                        for n, m in zip(depths, rows[-1]["depths"].values())))
    command = "python -m experiments.init_depth " + shlex.join(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown(rows, depths, command))
    (out_dir / "results.json").write_text(json.dumps(dict(command=command, depths=depths, rows=rows), indent=1) + "\n")
    print(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    return rows


if __name__ == "__main__":
    train.run_main(main, "experiments.init_depth")
