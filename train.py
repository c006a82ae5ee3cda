"""
The one training loop for every model in this suite: GPT (gpt.py), nGPT (ngpt.py) and anGPT (angpt.py).

On a laptop or any CPU (the "cpu" preset: tiny Shakespeare characters, 4 layers, width 128, about 2 minutes):
$ python train.py --model gpt

On one GPU (the "gpu" preset: nanoGPT's shakespeare_char config, 6 layers, width 384, context 256):
$ python train.py --model ngpt

A paper-like run (GPT-2 BPE OpenWebText, context 1024, 512 sequences per step) on 8 GPUs of one node:
$ python prepare_data.py openwebtext
$ torchrun --standalone --nproc_per_node=8 train.py --model angpt --preset owt

Any option overrides the preset and the model's recipe, as --key value or --key=value:
$ python train.py --model ngpt --max_iters 500 --learning_rate 4e-3 --out_dir out/ngpt-short

Settings are resolved in this order, later ones winning: the preset (sizes, data, schedule length; picked by
the device unless --preset says otherwise), the model file's RECIPE (learning rate, warmup, weight decay,
betas, eps, gradient clipping: each paper's own recipe), the model's Config defaults (model options such as
--rope), then the command line. `python train.py --help` lists every option with its defaults.

Each run writes into --out_dir (default out/<model>):
  log.jsonl    one JSON object per line: a step record every --log_interval steps
               {iter, tokens, loss, lr, ms_per_step, tokens_per_s, time_s, mfu, and the parameter-norm metrics
               param_norm, param_norm_layers, rel_step, dir_cos} and an eval record every --eval_interval steps
               {iter, tokens, train_loss, val_loss, lr, time_s, wall_s, scales, hidden_norm (the mean ||h|| after
               each block), and the saturation metrics saturation, saturation_kind, saturation_attn, attn_logit_std,
               heads} (results/README.md, "Parameter norms and saturation")
  config.json  the resolved settings
  ckpt.pt      the latest checkpoint (model, optimizer, settings, iteration, RNG state, best val loss);
               `--resume` continues from it
"""

import argparse
import dataclasses
import difflib
import importlib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import norms
import prepare_data
from variants import read_log

HERE = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# Models: every model file that exists is registered under its file name
MODEL_FILES = ("gpt", "ngpt", "angpt")
MODELS = tuple(name for name in MODEL_FILES if (HERE / f"{name}.py").exists())
SIZE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")  # set by presets and data
RECIPE_KEYS = ("learning_rate", "warmup_iters", "weight_decay", "beta1", "beta2", "eps", "grad_clip")


def load_model_module(name):
    return importlib.import_module(name)


# -----------------------------------------------------------------------------
# Settings. Presets hold sizes, data and the length of the run; the model's RECIPE holds the optimizer.
DEFAULTS = dict(
    # I/O
    out_dir=None,               # default: out/<model>
    eval_interval=250,
    eval_iters=50,              # batches per evaluation; the same fixed batches every time
    log_interval=10,
    resume=False,
    # data
    dataset="shakespeare_char",
    data_dir="data",
    batch_size=12,              # sequences per micro-step per process
    gradient_accumulation_steps=1,  # micro-steps per optimizer step, summed over all processes
    # model: the size fields come from the preset, the model options from the model's Config
    n_layer=4, n_head=4, n_embd=128, block_size=64,
    # optimizer and LR schedule: defaults come from the model file's RECIPE
    learning_rate=None, min_lr=None, warmup_iters=None, weight_decay=None,
    beta1=None, beta2=None, eps=None, grad_clip=None,
    decay_lr=True,              # cosine decay to min_lr after warmup; false: constant learning_rate (nanoGPT's)
    max_iters=2000,             # optimizer steps; the cosine schedule decays over all of them
    max_iters_per_launch=0,     # stop (checkpoint, exit) after this many steps; 0: no limit. For job slots
    # system
    device=None,                # default: cuda if available, else cpu
    dtype=None,                 # default: bfloat16 autocast on CUDA, float32 on CPU
    compile=False,
    seed=1337,
    skip_nonfinite=0,           # skip up to this many steps whose loss or gradient is not finite; 0: stop at the first
)
PRESETS = {
    # nanoGPT README's laptop run: 4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations
    "cpu": dict(dataset="shakespeare_char", n_layer=4, n_head=4, n_embd=128, block_size=64,
                batch_size=12, gradient_accumulation_steps=1, max_iters=2000, eval_interval=250,
                eval_iters=50, log_interval=10, compile=False),
    # nanoGPT's config/train_shakespeare_char.py (without dropout, which the papers do not use)
    "gpu": dict(dataset="shakespeare_char", n_layer=6, n_head=6, n_embd=384, block_size=256,
                batch_size=64, gradient_accumulation_steps=1, max_iters=5000, eval_interval=250,
                eval_iters=200, log_interval=10, compile=True),
    # paper-like: GPT-2 BPE OpenWebText, context 1k, 512 sequences (0.5M tokens) per step as in the nGPT
    # paper, GPT-2 small's width and depth so that it fits one node; NVIDIA's examples run 10k steps.
    # The nGPT paper warms GPT up for 2000 steps: add --warmup_iters 2000 for --model gpt.
    "owt": dict(dataset="openwebtext", n_layer=12, n_head=12, n_embd=768, block_size=1024,
                batch_size=16, gradient_accumulation_steps=32, max_iters=10000, eval_interval=1000,
                eval_iters=100, log_interval=10, compile=True),
}


class ConfigError(Exception):
    """A problem with the user's settings or files, reported as one line without a traceback."""


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss); reported as one line, exit code 1."""


def model_options():
    """{option: (default, [models])} for every Config field of every model beyond the size fields."""
    options = {}
    for name in MODELS:
        for f in dataclasses.fields(load_model_module(name).Config):
            if f.name not in SIZE_FIELDS:
                options.setdefault(f.name, (f.default, []))[1].append(name)
    return options


def parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, no usage block: the user sees what was wrong and where to look
        if message.startswith("unrecognized arguments:"):
            known = [o for action in self._actions for o in action.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
        self.exit(2, f"{self.prog}: error: {message} (see: python {self.prog} --help)\n")


def build_parser():
    p = Parser(prog="train.py", description="Train GPT, nGPT or anGPT with one shared loop.",
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Each run writes")[0])
    p.add_argument("--model", required=True, choices=MODELS, help="which model file to train")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: gpu if CUDA is available, else cpu")

    def by_preset(key):
        return ", ".join(f"{name} {preset.get(key, DEFAULTS[key])}" for name, preset in PRESETS.items())

    def by_model(key):
        return ", ".join(f"{name} {load_model_module(name).RECIPE[key]:g}" for name in MODELS)

    types = {bool: parse_bool, int: int, float: float, str: str}
    for key, default in DEFAULTS.items():
        if key == "resume":
            p.add_argument("--resume", nargs="?", const=True, type=parse_bool, default=None,
                           help="continue from <out_dir>/ckpt.pt (default: false)")
            continue
        if key in RECIPE_KEYS:
            kind, help_text = float if key != "warmup_iters" else int, f"default from the model's RECIPE: {by_model(key)}"
        elif key == "min_lr":
            kind, help_text = float, "default: learning_rate * the RECIPE's min_lr_ratio " + f"({by_model('min_lr_ratio')})"
        elif any(key in preset for preset in PRESETS.values()):
            kind, help_text = type(default), f"default by preset: {by_preset(key)}"
        else:
            kind, help_text = type(default) if default is not None else str, f"default: {default}"
        if key == "device":
            help_text = "cpu, cuda or cuda:N (default: cuda if available, else cpu)"
        if key == "dtype":
            help_text = "float32 or bfloat16 (autocast); default: bfloat16 on CUDA, float32 on CPU"
        if key == "out_dir":
            help_text = "default: out/<model>"
        p.add_argument(f"--{key}", type=types[kind], default=None, help=help_text)
    for key, (default, owners) in model_options().items():
        p.add_argument(f"--{key}", type=types[type(default)], default=None,
                       help=f"model option of {', '.join(owners)} (default: {default})")
    return p


def resolve_settings(argv):
    """Command line -> (settings, model module, the options given explicitly). Raises ConfigError on bad input."""
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    module = load_model_module(args.model)
    config_fields = {f.name: f.default for f in dataclasses.fields(module.Config)}
    for key in given:
        if key in model_options() and key not in config_fields:
            raise ConfigError(f"--{key} is not an option of model {args.model}")

    device = given.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = given.get("preset") or ("gpu" if device.startswith("cuda") else "cpu")
    s = dict(DEFAULTS, model=args.model, preset=preset)
    s.update(PRESETS[preset])
    s.update({k: module.RECIPE[k] for k in RECIPE_KEYS})
    s.update({k: v for k, v in config_fields.items() if k not in SIZE_FIELDS})
    s.update(given)
    s["device"] = device
    if s.get("min_lr") is None:
        s["min_lr"] = s["learning_rate"] * module.RECIPE["min_lr_ratio"]
    if s["out_dir"] is None:
        s["out_dir"] = os.path.join("out", args.model)
    if s["dtype"] is None:
        s["dtype"] = "bfloat16" if device.startswith("cuda") else "float32"

    # checks that would otherwise surface as a traceback deep inside the model or the loop
    if s["dtype"] not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype {s['dtype']} is not supported; use float32 or bfloat16")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device {device} is not supported; use cpu, cuda or cuda:N")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval"):
        if s[key] < 1:
            raise ConfigError(f"--{key} must be at least 1, got {s[key]}")
    if s["max_iters"] < 0:
        raise ConfigError(f"--max_iters must be at least 0, got {s['max_iters']}")
    if s["n_embd"] % s["n_head"] != 0:
        raise ConfigError(f"n_embd ({s['n_embd']}) must be divisible by n_head ({s['n_head']})")
    if (s["n_embd"] // s["n_head"]) % 2 != 0:
        raise ConfigError(f"the head size n_embd/n_head ({s['n_embd'] // s['n_head']}) must be even for rotary embeddings")
    if not 0 < s["learning_rate"] < float("inf"):
        raise ConfigError(f"--learning_rate must be a positive number, got {s['learning_rate']}")
    # the model file checks its own options (rope, qk_norm, ...): built on the meta device, which allocates nothing,
    # the model reports a bad one now, before any data is prepared or anything is written
    try:
        with torch.device("meta"):
            module.Model(module.Config(**{k: s[k] for k in config_fields if k in s}))
    except AssertionError as e:
        raise ConfigError(f"{e} (see: python train.py --help)")
    return s, module, given


# -----------------------------------------------------------------------------
# Data: nanoGPT's format, train.bin/val.bin of uint16 token ids and an optional meta.pkl

def dataset_dir(s):
    """The folder with the dataset's bins, preparing a known dataset the first time it is used."""
    folder = Path(s["data_dir"]) / s["dataset"]
    if not ((folder / "train.bin").exists() and (folder / "val.bin").exists()):
        if s["dataset"] not in prepare_data.KNOWN_DATASETS:
            raise ConfigError(f"no train.bin/val.bin in {folder}; prepare it with "
                              f"python prepare_data.py --input FILE --name {s['dataset']}")
        print(f"preparing dataset {s['dataset']} in {folder} (first use)")
        prepare_data.prepare(s["dataset"], data_dir=s["data_dir"])
    return folder


def read_vocab_size(folder):
    """From meta.pkl (char-level data); GPT-2's 50257 padded to 50304 when there is none (nanoGPT)."""
    meta = prepare_data.read_meta(folder)
    if meta and meta.get("tokenizer", "char") == "char":
        return meta["vocab_size"]
    return 50304


class Batches:
    """Random windows of the token stream, a pure function of (seed, iteration): the data order does not
    depend on the number of processes, and a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, folder, block_size, vocab_size, device):
        self.folder, self.block_size, self.vocab_size, self.device = folder, block_size, vocab_size, device
        for split in ("train", "val"):
            path = folder / f"{split}.bin"
            if path.stat().st_size % 2 != 0:
                raise ConfigError(f"{path} has an odd number of bytes, so it is not uint16 token ids: "
                                  f"truncated or corrupt; prepare it again with prepare_data.py --force")
            tokens = self.tokens(split)
            if len(tokens) <= block_size:
                raise ConfigError(f"{path} has {len(tokens)} tokens, not more than block_size {block_size}; "
                                  f"use a smaller --block_size or more data")
            # ids beyond the vocabulary would index outside the embedding; a file of up to 256M tokens is checked
            # whole here (a second or so), a bigger one batch by batch in get()
            if len(tokens) <= 2**28:
                self.check_ids(split, tokens)

    def check_ids(self, split, tokens):
        if tokens.max() >= self.vocab_size:
            raise ConfigError(f"{split}.bin in {self.folder} holds token id {int(tokens.max())}, but the vocabulary "
                              f"has {self.vocab_size} ids; its meta.pkl belongs to other data: prepare it again")

    def tokens(self, split):
        # a fresh memmap per call, as nanoGPT does, so that memory does not grow over a long run
        return np.memmap(self.folder / f"{split}.bin", dtype=np.uint16, mode="r")

    def get(self, split, seed, count):
        """`count` sequences (x, y), each (count, block_size), drawn with the given seed."""
        x, y = token_windows(self.tokens(split), self.block_size, count, seed)
        # y and the first column of x hold every id of the windows; checked on the host, before the copy to the
        # device: no sync
        self.check_ids(split, y)
        self.check_ids(split, x[:, :1])
        if self.device.startswith("cuda"):
            # pinned memory lets the copy to the GPU run asynchronously
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


def token_windows(tokens, length, count, seed):
    """`count` windows of the token stream at starts drawn with `seed`, as (x, y): the inputs and the next-token
    targets, (count, length) int64 each, on the CPU. The training batches and compare.py's evaluation at other
    context lengths are both cut here."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - length, (count,), generator=g).tolist()
    windows = torch.from_numpy(np.stack([tokens[i:i + length + 1] for i in starts]).astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# -----------------------------------------------------------------------------
# Learning-rate schedule: linear warmup, then cosine decay from learning_rate to min_lr over the run
# (or constant, --decay_lr false)

def get_lr(it, s):
    if it < s["warmup_iters"]:
        return s["learning_rate"] * (it + 1) / (s["warmup_iters"] + 1)
    if not s["decay_lr"]:
        return s["learning_rate"]
    decay_iters = max(1, s["max_iters"] - s["warmup_iters"])
    progress = min(1.0, (it - s["warmup_iters"]) / decay_iters)
    return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s["learning_rate"] - s["min_lr"])


# -----------------------------------------------------------------------------
# Model FLOPs utilization: FLOPs the model needs per token against what the device can do

# dense bf16 peaks from the vendors' data sheets, matched against torch.cuda.get_device_name()
KNOWN_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def flops_per_token(model, block_size):
    """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6 per weight of every matrix multiply (forward
    and backward) plus the attention scores and their use, 12 * n_layer * n_embd * context."""
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "wte" not in name)
    c = model.config
    return 6 * matmul_params + 12 * c.n_layer * c.n_embd * block_size


def peak_flops(device, dtype):
    """The device's peak FLOP/s: the data-sheet figure for known GPUs, else measured with a plain matmul.

    Measured as the fastest of several short timings: a peak is what the device can do, and one timing on a busy
    machine can catch a slow moment (and give an MFU above 100%)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, flops in KNOWN_PEAK_FLOPS.items():
            if key in name:
                return flops
    n, repeats, trials = 1024, 3, 7
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    a @ b  # warm-up
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    fastest = float("inf")
    for _ in range(trials):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * n**3 * repeats / fastest


# -----------------------------------------------------------------------------
# Checkpoints and logs

def train_step(model, optimizer, micro_batches, grad_clip, autocast=nullcontext(), skip_nonfinite=False,
               raw_model=None):
    """One optimizer step, the same in train.py, bench.py and the tests: the mean loss over micro_batches, a list of
    (x, y), and its gradient; the gradient norm, clipped at grad_clip (0 or None: measured only); the optimizer step;
    and the model's after_step() (nGPT's and anGPT's weight normalization). model may be compiled or wrapped in
    DDP (which then averages the gradients over processes on the last micro-batch only); raw_model is the model
    inside it. With skip_nonfinite, a step whose loss or gradient is not finite is not taken, which costs a host
    sync. Returns (loss, grad_norm, taken); loss and grad_norm are tensors on the device."""
    if raw_model is None:
        raw_model = model
    step_loss = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with model.no_sync() if isinstance(model, DDP) and not last else nullcontext():
            with autocast:
                _, loss = model(x, y)
            # DDP's average over processes times this 1/len(micro_batches) gives the mean over the global batch
            (loss / len(micro_batches)).backward()
        step_loss += loss.detach().float() / len(micro_batches)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip or float("inf"))
    if skip_nonfinite and not (torch.isfinite(grad_norm) & torch.isfinite(step_loss)).item():
        optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm, False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    raw_model.after_step()
    return step_loss, grad_norm, True


def save_checkpoint(path, state):
    """Write to a temporary file beside the target, then rename: a crash leaves the old checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not where in the unpickler it broke
        raise ConfigError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def load_trained_model(path, device="cpu"):
    """(model in eval mode on device, checkpoint) from a train.py checkpoint: how sample.py and compare.py read one.
    Every way a file can be wrong for this (not a checkpoint, a model file that is gone or changed) is a ConfigError.
    """
    checkpoint = load_checkpoint(path)
    missing = [k for k in ("model_name", "model_config", "model", "settings") if k not in checkpoint]
    if missing:
        raise ConfigError(f"{path} is not a train.py checkpoint (no {', '.join(missing)})")
    name = checkpoint["model_name"]
    if name not in MODELS:
        raise ConfigError(f"{path} holds a {name} model, but there is no {name}.py")
    module = load_model_module(name)
    try:
        model = module.Model(module.Config(**checkpoint["model_config"]))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, AssertionError, RuntimeError) as e:  # saved by another version of the model file
        raise ConfigError(f"{path} does not fit {name}.py as it is now: {str(e).splitlines()[0][:200]}")
    return model.to(device).eval(), checkpoint


def fmt_duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -----------------------------------------------------------------------------

SYSTEM_KEYS = ("device", "dtype", "compile", "out_dir", "resume", "max_iters_per_launch", "skip_nonfinite")


def start_processes(s):
    """(ddp, rank, world_size). Under torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE, one process per GPU
    (NCCL; s["device"] becomes this process's GPU) or per CPU process (gloo); else one process."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 1
    dist.init_process_group(backend="nccl" if s["device"].startswith("cuda") else "gloo")
    if s["device"].startswith("cuda"):
        s["device"] = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(s["device"])
    return True, dist.get_rank(), dist.get_world_size()


def build_model(module, model_args, s, device, checkpoint=None):
    """(model, optimizer): fresh, or as the checkpoint left them, with the RNG state it saved."""
    model = module.Model(module.Config(**model_args)).to(device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(s["weight_decay"]), lr=s["learning_rate"],
                                  betas=(s["beta1"], s["beta2"]), eps=s["eps"], fused=device.startswith("cuda"))
    if checkpoint is None:
        model.after_step()  # nGPT and anGPT: weights on the sphere / in the ball before the first step
        return model, optimizer
    # not after_step() on resume: normalizing normalized weights again moves their last bits
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng_cpu"])
    if device.startswith("cuda") and checkpoint.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"])
    return model, optimizer


def checkpoint_to_resume(s, given, out_dir):
    """The checkpoint that --resume continues, its settings merged into s (options given now override all but the
    model's shape), or None for a new run, which must find no run in out_dir. Checks that out_dir is writable."""
    ckpt_path, log_path = out_dir / "ckpt.pt", out_dir / "log.jsonl"
    checkpoint = None
    if s["resume"]:
        if not ckpt_path.exists():
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
        checkpoint = load_checkpoint(ckpt_path)
        if checkpoint.get("model_name") != s["model"]:
            raise ConfigError(f"--resume: {ckpt_path} holds a {checkpoint.get('model_name')} model, not {s['model']}")
        saved = checkpoint["settings"]
        changed = [f"--{k} {v} (checkpoint: {saved[k]})" for k, v in given.items()
                   if k in checkpoint["model_config"] and v != saved[k]]
        if changed:
            raise ConfigError(f"--resume: the checkpoint was trained with other model settings: {', '.join(changed)}; "
                              f"drop them or start a new run in another --out_dir")
        s.update({k: v for k, v in saved.items() if k not in SYSTEM_KEYS})
        s.update({k: v for k, v in given.items() if k != "device"})
    elif ckpt_path.exists() or log_path.exists():
        raise ConfigError(f"{out_dir} already holds a run; continue it with --resume, or use another --out_dir "
                          f"(nothing was changed)")
    existing = next(p for p in (out_dir, *out_dir.resolve().parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK)):
        raise ConfigError(f"cannot write to --out_dir {out_dir}: {existing} is not a writable folder")
    return checkpoint


@torch.no_grad()
def evaluate(model, eval_batches, s, autocast, rank=0, world_size=1):
    """The mean loss on each split's fixed evaluation batches, shared out over the processes (summed with
    all_reduce under DDP). model is the raw model, neither compiled nor DDP-wrapped; it is left in training mode."""
    model.eval()
    out = {}
    for split, (x, y) in eval_batches.items():
        total = torch.zeros(2, device=x.device)  # (sum of losses, count) over this process's share
        for i in range(rank, s["eval_iters"], world_size):
            rows = slice(i * s["batch_size"], (i + 1) * s["batch_size"])
            with autocast:
                _, loss = model(x[rows], y[rows])
            total += torch.stack((loss.float(), torch.ones((), device=x.device)))
        if world_size > 1:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out



def main(argv=None):
    s, module, given = resolve_settings(argv)

    ddp, rank, world_size = start_processes(s)
    master = rank == 0
    if s["gradient_accumulation_steps"] % world_size != 0:
        raise ConfigError(f"gradient_accumulation_steps ({s['gradient_accumulation_steps']}) must be a multiple "
                          f"of the number of processes ({world_size})")
    micro_steps = s["gradient_accumulation_steps"] // world_size  # per process
    sequences_per_iter = s["batch_size"] * s["gradient_accumulation_steps"]
    tokens_per_iter = sequences_per_iter * s["block_size"]
    out_dir = Path(s["out_dir"])
    ckpt_path, log_path = out_dir / "ckpt.pt", out_dir / "log.jsonl"

    device = s["device"]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    torch.manual_seed(s["seed"])
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # CPU: treat denormal floats (below 1.2e-38) as zero. Attention probabilities and SiLU tails underflow into
        # that range in trained models, where x86 arithmetic is many times slower: anGPT's steps took 13% longer
        torch.set_flush_denormal(True)
    autocast = (nullcontext() if s["dtype"] == "float32"
                else torch.autocast(device_type=device_type, dtype=torch.bfloat16))

    checkpoint = checkpoint_to_resume(s, given, out_dir)

    # data
    folder = dataset_dir(s) if master else Path(s["data_dir"]) / s["dataset"]
    if ddp:
        dist.barrier()  # rank 0 may have prepared the data
    vocab_size = read_vocab_size(folder)
    batches = Batches(folder, s["block_size"], vocab_size, device)

    # model, from scratch or from the checkpoint
    config_fields = {f.name for f in dataclasses.fields(module.Config)}
    model_args = {k: s[k] for k in config_fields if k in s}
    model_args["vocab_size"] = vocab_size
    if checkpoint is not None and model_args != checkpoint["model_config"]:
        raise ConfigError(f"--resume: the data in {folder} gives vocab_size {vocab_size}, but the checkpoint was "
                          f"trained with {checkpoint['model_config']['vocab_size']}")
    model, optimizer = build_model(module, model_args, s, device, checkpoint)
    iter_num, best_val_loss, time_s = 0, float("inf"), 0.0
    if checkpoint is not None:
        iter_num, best_val_loss, time_s = checkpoint["iter_num"], checkpoint["best_val_loss"], checkpoint["time_s"]
    raw_model = model
    if s["compile"]:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if device_type == "cuda" else None)

    if master:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create --out_dir {out_dir}: {e.strerror}")
        settings = dict(s, vocab_size=vocab_size, world_size=world_size, tokens_per_iter=tokens_per_iter,
                        num_params=raw_model.num_params(), torch=torch.__version__)
        (out_dir / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
        if checkpoint is not None and log_path.exists():
            # drop records from after the checkpoint: the resumed run writes them again
            kept = [r for r in read_log(log_path) if r["iter"] < iter_num or (r["iter"] == iter_num and "val_loss" in r)]
            log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif checkpoint is None:
            log_path.write_text("")
        print(f"{s['model']}: {raw_model.num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens per step, "
              f"{world_size} process(es) on {device}, out_dir {out_dir}")
    flops_per_step = flops_per_token(raw_model, s["block_size"]) * tokens_per_iter
    device_peak = peak_flops(device, s["dtype"]) * world_size

    def log(record):
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # the evaluation batches are drawn once and reused, so that successive evaluations are comparable
    eval_batches = {split: batches.get(split, seed=s["seed"] + 1 + k, count=s["eval_iters"] * s["batch_size"])
                    for k, split in enumerate(("train", "val"))}
    probe = eval_batches["val"][0][: max(1, norms.PROBE_TOKENS // s["block_size"])]  # for the saturation metrics

    def checkpoint_state():
        return dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), model_name=s["model"],
                    model_config=dataclasses.asdict(raw_model.config), settings=s, iter_num=iter_num,
                    best_val_loss=best_val_loss, time_s=time_s, rng_cpu=torch.get_rng_state(),
                    rng_cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None)

    # SIGINT (Ctrl-C) and SIGTERM (a job scheduler) end the run cleanly at the next step boundary
    stop_requests = []
    previous_handlers = {sig: signal.signal(sig, lambda signum, frame: stop_requests.append(signum))
                         for sig in (signal.SIGINT, signal.SIGTERM)}

    # training loop
    tracked, last_logged = norms.norm_group(raw_model), None  # for the parameter-norm metrics of the step records
    resumed, start_iter, start_wall = checkpoint is not None, iter_num, time.time()
    last_log_time, last_log_iter = time.time(), iter_num
    loss_sum = torch.zeros((), device=device)  # summed over the steps since the last log line
    final = {}
    # a non-finite loss or gradient is noted on the device (no host sync per step) and acted on at the next log
    # or checkpoint, which it must never reach; --skip_nonfinite instead checks every step and skips bad ones
    first_bad_iter = torch.full((), -1, dtype=torch.long, device=device)
    last_saved_iter = iter_num if resumed else None
    skipped = skipped_since_log = 0

    def stop_if_nonfinite():
        bad = int(first_bad_iter.item())
        if bad >= 0:
            last_good = (f"{ckpt_path} (step {last_saved_iter})" if last_saved_iter is not None else "none was written")
            raise TrainingError(f"the loss or gradient norm became non-finite at step {bad}; the last good checkpoint is "
                                f"{last_good}. Resume it with a lower --learning_rate, or skip such steps "
                                f"with --skip_nonfinite N")

    while True:
        # evaluate and checkpoint every eval_interval steps and at the end (the resumed start was done already)
        if (iter_num % s["eval_interval"] == 0 or iter_num == s["max_iters"]) and not (resumed and iter_num == start_iter):
            stop_if_nonfinite()
            losses = evaluate(raw_model, eval_batches, s, autocast, rank, world_size)
            best_val_loss = min(best_val_loss, losses["val"])
            log(dict(iter=iter_num, tokens=iter_num * tokens_per_iter, train_loss=losses["train"],
                     val_loss=losses["val"], lr=get_lr(iter_num, s), time_s=time_s, wall_s=time.time() - start_wall,
                     scales=norms.scale_summary(raw_model), **(norms.eval_metrics(raw_model, probe, s["model"]) if master else {})))
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                save_checkpoint(ckpt_path, checkpoint_state())
            last_saved_iter = iter_num
            final = dict(iter=iter_num, train_loss=losses["train"], val_loss=losses["val"], best_val_loss=best_val_loss)
            last_log_time = time.time()  # evaluation time does not count as training time
        if iter_num >= s["max_iters"]:
            break
        launch_done = s["max_iters_per_launch"] and iter_num - start_iter >= s["max_iters_per_launch"]
        stop = torch.tensor(float(bool(stop_requests) or bool(launch_done)))
        if ddp and iter_num % s["log_interval"] == 0:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # every process stops at the same step
        if stop.item() > 0 and (not ddp or iter_num % s["log_interval"] == 0):
            stop_if_nonfinite()
            if master:
                save_checkpoint(ckpt_path, checkpoint_state())
                reason = "interrupted" if stop_requests else f"--max_iters_per_launch {s['max_iters_per_launch']} reached"
                print(f"{reason}: checkpoint of step {iter_num} saved in {ckpt_path}; continue with: "
                      f"python train.py --model {s['model']} --out_dir {out_dir} --resume")
            final = dict(final, iter=iter_num, stopped=True)
            break

        # one optimizer step over gradient_accumulation_steps micro-batches of the global batch
        step_start = time.time()
        logging_step = (iter_num + 1) % s["log_interval"] == 0 or iter_num + 1 == s["max_iters"]
        if logging_step and master:
            before_step = [p.detach().float().clone() for _, p in tracked]
        lr = get_lr(iter_num, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_all, y_all = batches.get("train", seed=s["seed"] * 1_000_003 + iter_num, count=sequences_per_iter)
        mine = [slice(m * s["batch_size"], (m + 1) * s["batch_size"])
                for m in range(rank * micro_steps, (rank + 1) * micro_steps)]  # this process's rows of the batch
        step_loss, grad_norm, taken = train_step(model, optimizer, [(x_all[rows], y_all[rows]) for rows in mine],
                                                 s["grad_clip"], autocast, s["skip_nonfinite"] > 0, raw_model)
        if not taken:
            skipped += 1
            if master:
                print(f"iter {iter_num}: non-finite loss or gradient, step skipped ({skipped} of at most {s['skip_nonfinite']})")
            log(dict(iter=iter_num, skipped=True, skipped_total=skipped))
            if skipped > s["skip_nonfinite"]:
                raise TrainingError(f"more than --skip_nonfinite {s['skip_nonfinite']} steps had a non-finite loss or "
                                    f"gradient (the last at step {iter_num}); lower --learning_rate")
            skipped_since_log += 1
        else:
            finite = torch.isfinite(grad_norm) & torch.isfinite(step_loss)
            first_bad_iter = torch.where(finite | (first_bad_iter >= 0), first_bad_iter, iter_num)
            loss_sum += step_loss
        iter_num += 1
        time_s += time.time() - step_start

        if iter_num % s["log_interval"] == 0 or iter_num == s["max_iters"]:
            # the only host sync in the loop: the mean loss over the steps since the last log, over all processes
            stop_if_nonfinite()
            steps = iter_num - last_log_iter
            counted, skipped_since_log = max(1, steps - skipped_since_log), 0
            if ddp:
                dist.all_reduce(loss_sum)
            mean_loss = loss_sum.item() / counted / world_size
            loss_sum.zero_()
            now = time.time()
            ms_per_step = (now - last_log_time) * 1000 / steps
            last_log_time, last_log_iter = now, iter_num
            record = dict(iter=iter_num - 1, tokens=iter_num * tokens_per_iter, loss=mean_loss, lr=lr,
                          ms_per_step=ms_per_step, tokens_per_s=tokens_per_iter * 1000 / ms_per_step, time_s=time_s,
                          mfu=flops_per_step / (ms_per_step / 1000) / device_peak)
            if master:
                record.update(norms.norm_metrics(tracked, before_step, last_logged))
                last_logged = [p.detach().float().clone() for _, p in tracked]
            log(record)
            if master:
                eta = (s["max_iters"] - iter_num) * ms_per_step / 1000
                print(f"iter {iter_num - 1}: loss {mean_loss:.4f}, lr {lr:.2e}, {ms_per_step:.1f} ms/step, "
                      f"{record['tokens_per_s']:,.0f} tok/s, mfu {record['mfu']:.1%}, eta {fmt_duration(eta)}")

    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)
    if master and not final.get("stopped"):
        print(f"done: {iter_num - start_iter} steps in {fmt_duration(time.time() - start_wall)}, "
              f"final val loss {final.get('val_loss', float('nan')):.4f}, best {best_val_loss:.4f}")
    if ddp:
        # wait for rank 0 to finish writing: a process that tears gloo down while its peer is still busy aborts
        dist.barrier()
        dist.destroy_process_group()
    return final


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, prepare_data.DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)
