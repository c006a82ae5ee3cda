"""
Time one training step of every model side by side: forward, backward, gradient clipping, the optimizer step
and after_step() (nGPT's and anGPT's weight normalization), on the same synthetic batch.

The models take turns after a warm-up, one turn each per round, the order rotated by one every round so that
each model runs equally often first, second, and so on (A B C D, B C D A, ...). A model's ratio to GPT is the
median over rounds of its time over GPT's in the same round, which cancels the machine's slow drifts; the table
also gives the middle half of those per-round ratios (25th to 75th percentile) as a measure of the noise, and the
same against GPT+QK-norm (gpt_qk), the anGPT paper's baseline.
--control adds a second GPT, built afresh: its ratio to GPT is what 1.00x looks like on this machine today.
Absolute times across runs of a busy machine are not comparable.

$ python -m experiments.bench                    # the CPU preset's size (4 layers, width 128, context 64)
$ python -m experiments.bench --n_layer 6 --n_embd 384 --n_head 6 --block_size 256 --batch_size 8
$ python -m experiments.bench --compile          # also time torch.compile'd models, and check graph breaks
$ python -m experiments.bench --compile --control --rounds 60    # with a second GPT as the noise floor
$ python -m experiments.bench --json bench.json  # {model: {ms_per_step, ratios, tokens_per_s, mfu}}
$ python -m experiments.bench --device cuda --dtype bfloat16 --n_layer 12 --n_embd 768 --n_head 12 \
    --block_size 1024 --batch_size 16

MFU (model FLOPs utilization) is the model's training FLOPs per token (train.flops_per_token) times tokens per
second, over the device's peak: --peak_flops if given, the data-sheet figure for known GPUs, else measured with
a plain matmul of the same dtype on the same device.
"""

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext

import torch

import train
from compare import ARCHITECTURES, VARIANTS

BASELINES = ("gpt", "gpt_qk")  # each model's step time is given as a ratio to these, where they are timed


def config_options(key):
    """A variant's options as fields of its model file's Config ({"qk_norm": "true"})."""
    options = VARIANTS[key][1]
    return {option[2:]: value for option, value in zip(options[::2], options[1::2])}


def make_step(model, module, x, y, autocast):
    """One training step of `model` as train.py takes it (train.train_step), without data loading and logging."""
    recipe = module.RECIPE
    optimizer = torch.optim.AdamW(model.optimizer_groups(recipe["weight_decay"]), lr=recipe["learning_rate"],
                                  betas=(recipe["beta1"], recipe["beta2"]), eps=recipe["eps"],
                                  fused=x.device.type == "cuda")

    def step(forward):  # forward: the model itself or its compiled version
        train.train_step(forward, optimizer, [(x, y)], recipe["grad_clip"], autocast, raw_model=model)

    return step


def parse_args(argv):
    p = train.Parser(prog="experiments.bench", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(ARCHITECTURES),
                   help="comma-separated, from: " + ", ".join(ARCHITECTURES))
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=65, help="65: tiny Shakespeare's characters")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd models")
    p.add_argument("--compiled_only", action="store_true", help="with --compile: time the compiled models only")
    p.add_argument("--control", action="store_true", help="also time a second GPT (gpt_control), the noise floor")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds; each model takes --steps steps per round")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    p.add_argument("--peak_flops", type=float, default=None, help="the device's peak FLOP/s (default: known or measured)")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.keys = args.models.split(",")
    unknown = [k for k in args.keys if k not in ARCHITECTURES]
    if unknown:
        p.error(f"unknown model(s): {', '.join(unknown)}")
    if args.n_embd % args.n_head:
        p.error(f"n_embd ({args.n_embd}) must be divisible by n_head ({args.n_head})")
    if args.compiled_only and not args.compile:
        p.error("--compiled_only goes with --compile")
    return args


def build_contenders(args, x, y, autocast):
    """{name in the table: (step function, forward to use, model)}: every model, eager and compiled."""
    size = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                vocab_size=args.vocab_size)
    contenders = {}
    for key in args.keys + (["gpt_control"] if args.control else []):
        variant = "gpt" if key == "gpt_control" else key
        module = train.MODELS[VARIANTS[variant][0]]
        model = module.Model(module.Config(**size, **config_options(variant))).to(args.device)
        model.after_step()
        step = make_step(model, module, x, y, autocast)
        if not args.compiled_only:
            contenders[key] = (step, model, model)
        if args.compile:
            explanation = torch._dynamo.explain(model)(x, y)
            print(f"{key}: torch.compile sees {explanation.graph_count} graph(s), "
                  f"{explanation.graph_break_count} graph break(s)")
            contenders[key + "+compile"] = (step, torch.compile(model), model)
    return contenders


def time_rounds(contenders, args, sync):
    """{name: ms per step in each round}. The rounds interleave the models, each round starting one model later,
    so that a slow moment of the machine hits all of them alike."""
    print(f"warming up ({args.warmup} steps each{', compiling' if args.compile else ''}) ...")
    for name, (step, forward, _) in contenders.items():
        for _ in range(args.warmup):
            step(forward)
        sync()
    times = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            step, forward, _ = contenders[name]
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(forward)
            sync()
            times[name].append((time.perf_counter() - start) * 1000 / args.steps)
    return times


def summarize(contenders, times, args, peak):
    """Per contender: median ms/step, tokens/s, MFU, and its ratio to each baseline, round by round."""
    tokens = args.batch_size * args.block_size
    results = {}
    for name, (_, _, model) in contenders.items():
        ms = statistics.median(times[name])
        results[name] = dict(ms_per_step=ms, tokens_per_s=tokens / (ms / 1000),
                             mfu=train.flops_per_token(model, args.block_size) * tokens / (ms / 1000) / peak)
    for name, r in results.items():
        r["ratios"] = {}
        for base in [b for b in BASELINES if b in args.keys]:
            base_name = base + "+compile" if name.endswith("+compile") else base
            ratios = [t / t_base for t, t_base in zip(times[name], times[base_name])]  # round by round
            # the 25th and 75th percentiles, within the data ("inclusive": no extrapolation from a few rounds)
            quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
            r["ratios"][base] = dict(median=statistics.median(ratios), quartiles=[quartiles[0], quartiles[2]])
    return results


def markdown_table(results, baselines):
    """The results as a markdown table: ms/step, the ratio to each baseline with the middle half of the rounds,
    tokens/s and MFU."""
    lines = ["| model | ms/step | " + " | ".join(f"vs {b} (middle half of rounds)" for b in baselines)
             + " | tokens/s | MFU |", "|---|---|" + "---|" * len(baselines) + "---|---|"]
    for name, r in results.items():
        ratios = " | ".join("{median:.3f}x ({quartiles[0]:.3f}-{quartiles[1]:.3f})".format(**r["ratios"][b])
                            for b in baselines)
        lines.append(f"| {name} | {r['ms_per_step']:.2f} | {ratios} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} |")
    return lines


def print_table(results, args, peak):
    print(f"\n{args.device} {args.dtype}, {args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, context "
          f"{args.block_size}, batch {args.batch_size}; median of {args.rounds} interleaved rounds of {args.steps} "
          f"steps; peak {peak / 1e12:.3g} TFLOP/s\n")
    print("\n".join(markdown_table(results, [b for b in BASELINES if b in args.keys])))
    if args.compile and not args.compiled_only:
        for key in args.keys:
            gain = results[key]["ms_per_step"] / results[key + "+compile"]["ms_per_step"]
            print(f"{key}: torch.compile {'helped' if gain > 1 else 'did not help'} ({gain:.2f}x the eager speed)")


def main(argv=None):
    args = parse_args(argv)
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()
    sync = (lambda: torch.cuda.synchronize(args.device)) if device_type == "cuda" else (lambda: None)
    if device_type == "cpu":
        torch.set_flush_denormal(True)  # as train.py does: denormal floats are slow on x86 CPUs

    torch.manual_seed(0)
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), device=args.device)
    y = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), device=args.device)
    contenders = build_contenders(args, x, y, autocast)
    times = time_rounds(contenders, args, sync)
    peak = args.peak_flops or train.peak_flops(args.device, args.dtype)
    results = summarize(contenders, times, args, peak)
    print_table(results, args, peak)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
