"""
The one training loop for every model in this suite: GPT (gpt.py), nGPT (ngpt.py) and anGPT (angpt.py).

On a laptop or any CPU (the "cpu" preset: tiny Shakespeare characters, 4 layers, width 128, about 2 minutes):
$ python train.py --model gpt

On one GPU (the "gpu" preset: nanoGPT's shakespeare_char config, 6 layers, width 384, context 256):
$ python train.py --model ngpt

A paper-like run (GPT-2 BPE OpenWebText, context 1024, 512 sequences per step) on 8 GPUs of one node:
$ python prepare_data.py openwebtext
$ torchrun --standalone --nproc_per_node=8 train.py --model angpt --preset owt

Settings are resolved in this order, later ones winning: DEFAULTS, the preset (sizes, data, length of the run;
picked by the device unless --preset says otherwise), the model file's RECIPE (each paper's optimizer settings),
the model's Config defaults (model options such as --qk_norm or --rope_fraction), then the command line, as
--key value or --key=value:
$ python train.py --model ngpt --max_iters 500 --learning_rate 4e-3 --out_dir out/ngpt-short

Each run writes into --out_dir (default out/<model>):
  log.jsonl    one JSON object per line: a step record every --log_interval steps
               {iter, tokens, loss, lr, ms_per_step, tokens_per_s, time_s, mfu, and norms.py's parameter-norm
               metrics param_norm, param_norm_layers, rel_step, alignment, dir_cos} and an eval record every
               --eval_interval steps {iter, tokens, train_loss, val_loss, lr, time_s, wall_s, scales, and norms.py's
               eval metrics hidden_norm, saturation, saturation_kind, saturation_attn, attn_logit_std, heads,
               heads_saturated}, and with --skip_nonfinite {iter, skipped, skipped_total} for a step not taken
  config.json  the resolved settings, with the data's vocab_size and tokens_hash
  ckpt.pt      the latest checkpoint (model, optimizer, settings, step, RNG state); --resume continues from it
"""

import argparse
import dataclasses
import datetime
import difflib
import importlib.util
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

import angpt
import gpt
import ngpt
import norms
import prepare_data

MODELS = {"gpt": gpt, "ngpt": ngpt, "angpt": angpt}  # --model NAME trains NAME.py

# -----------------------------------------------------------------------------
# Settings. Presets hold sizes, data and the length of the run; the model file's RECIPE holds the optimizer's.
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
    # model: the sizes (vocab_size comes from the data); the model options come from each model's Config
    n_layer=4, n_head=4, n_embd=128, block_size=64,
    # AdamW and the LR schedule: None means the model's RECIPE
    learning_rate=None,
    warmup=None,                # steps (100), or a share of max_iters (20%)
    min_lr_ratio=None,          # the cosine decays to learning_rate x min_lr_ratio
    weight_decay=None, beta1=None, beta2=None, eps=None, grad_clip=None,
    decay_lr=True,              # cosine decay after warmup; false: constant learning_rate (nanoGPT's)
    max_iters=2000,             # optimizer steps; the cosine schedule decays over all of them
    max_iters_per_launch=0,     # stop (checkpoint, exit) after this many steps; 0: no limit. For job slots
    # system
    device=None,                # default: cuda if available, else cpu
    dtype=None,                 # default: bfloat16 autocast on CUDA, float32 on CPU
    param_dtype="float32",      # bfloat16: the blocks' matrices stored and stepped in bf16, as NVIDIA's nGPT code
    compile=False,
    seed=1337,
    skip_nonfinite=0,           # skip up to this many steps whose loss or gradient is not finite; 0: stop at the first
    # experiment tracking (optional: pip install wandb), as nanoGPT's
    wandb_log=False,            # send the numbers of every log record to wandb
    wandb_project="normalized-transformers",
    wandb_run_name=None,        # default: the name of out_dir
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
    # The nGPT paper warms GPT up for 2000 steps: add --warmup 2000 for --model gpt.
    "owt": dict(dataset="openwebtext", n_layer=12, n_head=12, n_embd=768, block_size=1024,
                batch_size=16, gradient_accumulation_steps=32, max_iters=10000, eval_interval=1000,
                eval_iters=100, log_interval=10, compile=True),
    # the papers' regime on one GPU: FineWeb in GPT-2 BPE (the speedrun's shards), context 1k, GPT-2 small's width
    # and depth, 128 sequences (131k tokens) per step, 2000 steps = 262M tokens per run (README, "One GPU")
    "fineweb": dict(dataset="fineweb10B", n_layer=12, n_head=12, n_embd=768, block_size=1024,
                    batch_size=32, gradient_accumulation_steps=4, max_iters=2000, eval_interval=100,
                    eval_iters=20, log_interval=10, compile=True),
}
SIZE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")  # of every Config; set by presets and data
RECIPE_KEYS = ("learning_rate", "warmup", "min_lr_ratio", "weight_decay", "beta1", "beta2", "eps", "grad_clip")
# what --resume takes from the new command line, and what compare.py may change in a run it reuses
SYSTEM_KEYS = ("device", "dtype", "compile", "out_dir", "resume", "max_iters_per_launch", "skip_nonfinite",
               "wandb_log", "wandb_project", "wandb_run_name")


class ConfigError(Exception):
    """A mistake in the settings or the files given, printed as one line (exit status 2)."""


class TrainingError(Exception):
    """Training cannot go on: the loss became non-finite (exit status 1)."""


def model_options():
    """{option: {model: default}}: the Config fields of every model beyond the sizes."""
    options = {}
    for name, module in MODELS.items():
        for f in dataclasses.fields(module.Config):
            if f.name not in SIZE_FIELDS:
                options.setdefault(f.name, {})[name] = f.default
    return options


def parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, no usage block, and a guess for a mistyped option
        if message.startswith("unrecognized arguments:"):
            known = [o for action in self._actions for o in action.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                message += f" (did you mean {close[0]}?)" if close else ""
        how = f"python {self.prog}" if self.prog.endswith(".py") else f"python -m {self.prog}"  # experiments.*
        self.exit(2, f"{self.prog}: error: {message} (see: {how} --help)\n")


# the help of the options whose default alone says too little
HELP = dict(out_dir="default: out/<model>", device="cpu, cuda, cuda:N or mps (default: cuda if available)",
            dtype="bfloat16 autocast or float32 (default: bfloat16 on CUDA, float32 elsewhere)",
            param_dtype="bfloat16: the blocks' matrices stored and stepped by AdamW in bf16 (NVIDIA's nGPT code); "
                        "needs --dtype bfloat16")


def build_parser():
    p = Parser(prog="train.py", description="Train GPT, nGPT or anGPT with one shared loop.",
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, choices=MODELS, help="which model file to train")
    p.add_argument("--preset", choices=PRESETS, help="default: gpu if CUDA is available, else cpu")
    by_model = lambda key: ", ".join(f"{name} {module.RECIPE[key]:g}" if isinstance(module.RECIPE[key], float)
                                     else f"{name} {module.RECIPE[key]}" for name, module in MODELS.items())
    for key, default in DEFAULTS.items():
        kind = {bool: parse_bool, int: int, float: float}.get(type(default), str)
        help_text = HELP.get(key, f"default: {default}")
        if key in RECIPE_KEYS:
            kind, help_text = (str if key == "warmup" else float), f"default from the model's RECIPE: {by_model(key)}"
        elif key in PRESETS["cpu"]:
            help_text = "default by preset: " + ", ".join(f"{n} {preset[key]}" for n, preset in PRESETS.items())
        extra = dict(choices=("float32", "bfloat16")) if key in ("dtype", "param_dtype") else {}
        p.add_argument(f"--{key}", type=kind, help=help_text, **extra, **(dict(nargs="?", const=True)
                                                                           if key == "resume" else {}))
    for key, defaults in model_options().items():
        # read as text: two models may type one option differently; resolve_settings converts it for the model
        p.add_argument(f"--{key}", help="model option of " + ", ".join(f"{name} (default: {default})"
                                                                       for name, default in defaults.items()))
    return p


def model_option_value(key, text, default):
    """A model option's text as its Config field's type (that of the default)."""
    try:
        return parse_bool(text) if isinstance(default, bool) else type(default)(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise ConfigError(f"--{key}: expected {type(default).__name__}, got {text!r}") from None


def in_current_terms(settings):
    """A run's settings or model config, as logged or checkpointed by an earlier version, in today's options:
    anGPT's --const_factors false (nu_uz = 1) is --const_factor_mult 2, which builds the same model (nu_uz = 1/2
    times 2); a run from before --warmup and --min_lr_ratio had its warmup as warmup_frac or warmup_iters, and its
    final LR as min_lr."""
    settings = dict(settings)
    if settings.pop("const_factors", True) is False:
        settings["const_factor_mult"] = 2.0
    if "learning_rate" not in settings:  # a model config: no schedule
        return settings
    if "warmup" not in settings:
        share = settings.get("warmup_frac")
        settings["warmup"] = warmup_value(f"{share * 100:g}%" if share is not None else settings["warmup_iters"])
    if settings.get("min_lr_ratio") is None:
        ratio = MODELS[settings["model"]].RECIPE["min_lr_ratio"]
        given = settings["min_lr"] != settings["learning_rate"] * ratio  # an --min_lr that there was then
        settings["min_lr_ratio"] = settings["min_lr"] / settings["learning_rate"] if given else ratio
    return settings


def warmup_value(warmup):
    """--warmup or RECIPE's warmup as settings hold it: a number of steps (100), or a share of the run ("20%", as
    Table F.2 writes it); "0%" is 0."""
    text = str(warmup).strip()
    try:
        share = float(text[:-1]) if text.endswith("%") else None
        value = int(text) if share is None else f"{share:g}%" if share else 0
    except ValueError:
        value = share = None
    if value is None or (share is None and value < 0) or (share is not None and not 0 <= share < 100):
        raise ConfigError(f"--warmup is a number of steps (100) or a share of the run from 0% to below 100% (20%), "
                          f"got {warmup}")
    return value


def resolve_settings(argv):
    """Command line -> (settings, the options given on it). Raises ConfigError for a bad value."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    module = MODELS[given["model"]]
    config_fields = {f.name: f.default for f in dataclasses.fields(module.Config)}
    for key in set(given) & set(model_options()):
        if key not in config_fields:
            raise ConfigError(f"--{key} is not an option of model {given['model']}")
        given[key] = model_option_value(key, given[key], config_fields[key])
    device = given.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    s = dict(DEFAULTS, preset=given.get("preset") or ("gpu" if device.startswith("cuda") else "cpu"))
    s.update(PRESETS[s["preset"]])
    s.update({k: module.RECIPE[k] for k in RECIPE_KEYS})
    s.update({k: v for k, v in config_fields.items() if k not in SIZE_FIELDS})
    s.update(given, device=device)
    # the schedule in steps and learning rates, as get_lr uses it and config.json shows it
    s["warmup"] = warmup_value(s["warmup"])
    s["warmup_iters"] = (round(float(s["warmup"][:-1]) / 100 * s["max_iters"]) if isinstance(s["warmup"], str)
                         else s["warmup"])
    s["min_lr"] = s["learning_rate"] * s["min_lr_ratio"]
    s["out_dir"] = s["out_dir"] or os.path.join("out", s["model"])
    s["dtype"] = s["dtype"] or ("bfloat16" if device.startswith("cuda") else "float32")

    if not (device in ("cpu", "mps") or device.startswith("cuda")):
        raise ConfigError(f"--device {device} is not supported; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS (Apple's GPU) is not available; use --device cpu")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval", "max_iters"):
        if s[key] < (0 if key == "max_iters" else 1):
            raise ConfigError(f"--{key} must be at least {0 if key == 'max_iters' else 1}, got {s[key]}")
    if s["n_embd"] % s["n_head"] or (s["n_embd"] // s["n_head"]) % 2:
        raise ConfigError(f"n_embd ({s['n_embd']}) must be n_head ({s['n_head']}) times an even head size "
                          f"(rotary embeddings turn pairs of dimensions)")
    if s["param_dtype"] == "bfloat16" and s["dtype"] != "bfloat16":
        raise ConfigError("--param_dtype bfloat16 needs bf16 autocast: add --dtype bfloat16")
    if s["wandb_log"] and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb_log true needs the wandb package: pip install wandb")
    if not 0 < s["learning_rate"] < math.inf:
        raise ConfigError(f"--learning_rate must be a positive number, got {s['learning_rate']}")
    # the model checks its own options (rope, qk_norm, ...): built on the meta device, which allocates nothing
    try:
        with torch.device("meta"):
            module.Model(module.Config(**{k: s[k] for k in config_fields if k in s}))
    except AssertionError as e:
        raise ConfigError(f"{e} (see: python train.py --help)")
    return s, given


# -----------------------------------------------------------------------------
# Data: nanoGPT's train.bin/val.bin and meta.pkl, or FineWeb's token shards (prepare_data.read_tokens reads both).
# A batch is a pure function of (seed, step): the data order does not depend on the number of processes, and a
# resumed run sees the batches an uninterrupted one would.

def token_windows(tokens, length, count, seed):
    """`count` windows of the token stream at starts drawn with `seed`, as (x, y): the inputs and the next-token
    targets, (count, length) int64 each, on the CPU. Training batches and experiments/extrapolate.py cut them here."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - length, (count,), generator=g).tolist()
    windows = torch.from_numpy(np.stack([tokens[i:i + length + 1] for i in starts]).astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def vocab_size_of(folder):
    """Char-level data has its vocabulary in meta.pkl; GPT-2 BPE's 50257 ids are padded to 50304 (nanoGPT)."""
    meta = prepare_data.read_meta(folder)
    return meta["vocab_size"] if meta and meta.get("tokenizer", "char") == "char" else 50304


class Data:
    """A prepared dataset (rank 0 prepares a known one on first use), its vocabulary size, and its batches."""

    def __init__(self, s, master, ddp):
        self.folder, self.block_size, self.device = Path(s["data_dir"]) / s["dataset"], s["block_size"], s["device"]
        if master and not prepare_data.has_tokens(self.folder):
            if s["dataset"] not in prepare_data.KNOWN_DATASETS:
                raise ConfigError(f"no train.bin/val.bin in {self.folder}; prepare it with "
                                  f"python prepare_data.py --input FILE --name {s['dataset']}")
            print(f"preparing dataset {s['dataset']} in {self.folder} (first use)")
            prepare_data.prepare(s["dataset"], data_dir=s["data_dir"])
        if ddp:
            dist.barrier()  # rank 0 may have prepared the data
        self.vocab_size, self.tokens_hash = vocab_size_of(self.folder), prepare_data.tokens_hash(self.folder)
        for split in ("train", "val"):
            tokens = prepare_data.read_tokens(self.folder, split)
            if len(tokens) <= self.block_size:
                raise ConfigError(f"the {split} split in {self.folder} has {len(tokens)} tokens, not more than "
                                  f"block_size {self.block_size}; use a smaller --block_size or more data")
            # an id beyond the vocabulary would index outside the embedding; checked whole up to 256M tokens (a
            # second or so), which any meta.pkl of other data fails
            if len(tokens) <= 2**28 and tokens.max() >= self.vocab_size:
                raise ConfigError(f"the {split} split in {self.folder} holds token id {int(tokens.max())}, but the "
                                  f"vocabulary has {self.vocab_size} ids; its meta.pkl belongs to other data")

    def eval_batches(self, seed, count):
        """Both splits' evaluation batches, drawn once, so that successive evaluations are comparable."""
        return {split: self.batch(split, seed + 1 + k, count) for k, split in enumerate(("train", "val"))}

    def batch(self, split, seed, count):
        # the memmap is opened anew for every batch, as nanoGPT does, so that memory does not grow over a long run
        x, y = token_windows(prepare_data.read_tokens(self.folder, split), self.block_size, count, seed)
        if self.device.startswith("cuda"):  # pinned memory: the copy to the GPU runs asynchronously
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


# -----------------------------------------------------------------------------
# Learning-rate schedule: linear warmup, then cosine decay from learning_rate to min_lr (or constant, --decay_lr false)

def get_lr(it, s):
    if it < s["warmup_iters"]:
        return s["learning_rate"] * (it + 1) / (s["warmup_iters"] + 1)
    if not s["decay_lr"]:
        return s["learning_rate"]
    decay_iters = max(1, s["max_iters"] - s["warmup_iters"])
    progress = min(1.0, (it - s["warmup_iters"]) / decay_iters)
    return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s["learning_rate"] - s["min_lr"])


# -----------------------------------------------------------------------------
# Model FLOPs utilization: the FLOPs the model needs per token against what the device can do

KNOWN_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def flops_per_token(model, block_size):
    """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6 per weight of every matrix multiply (forward
    and backward) plus the attention scores and their use, 12 * n_layer * n_embd * context."""
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "wte" not in name)
    c = model.config
    return 6 * matmul_params + 12 * c.n_layer * c.n_embd * block_size


def peak_flops(device, dtype):
    """The device's peak FLOP/s: the dense bf16 figure of a known GPU's data sheet, else measured with a matmul
    (the fastest of several timings: one on a busy machine can catch a slow moment)."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else ""
    for key, flops in KNOWN_PEAK_FLOPS.items():
        if key in name:
            return flops
    a = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.split(":")[0], lambda: None)
    fastest = math.inf
    for _ in range(8):  # the first is a warm-up
        sync()
        start = time.perf_counter()
        a @ a, a @ a, a @ a
        sync()
        fastest = min(fastest, time.perf_counter() - start)
    return 3 * 2 * 1024**3 / fastest


# -----------------------------------------------------------------------------
# The training step, the same in train.py, experiments/bench.py and the tests

def train_step(model, optimizer, micro_batches, grad_clip, autocast=nullcontext(), skip_nonfinite=False,
               raw_model=None):
    """One optimizer step: the mean loss over micro_batches, a list of (x, y), and its gradient; the gradient norm,
    clipped at grad_clip (0 or None: measured only); the optimizer step; and the model's after_step() (nGPT's and
    anGPT's weight normalization). model may be compiled or wrapped in DDP, raw_model is the model inside it. With
    skip_nonfinite a step whose loss or gradient is not finite is not taken (a host sync).
    Returns (loss, grad_norm, taken), the first two as tensors on the device."""
    raw_model = raw_model or model
    step_loss = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        # DDP averages the gradients over processes on the last micro-batch only
        with model.no_sync() if isinstance(model, DDP) and i < len(micro_batches) - 1 else nullcontext():
            with autocast:
                _, loss = model(x, y)
            # DDP's average over processes times this 1/len(micro_batches) gives the mean over the global batch
            (loss / len(micro_batches)).backward()
        step_loss += loss.detach().float() / len(micro_batches)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip or math.inf)
    if skip_nonfinite and not (torch.isfinite(grad_norm) & torch.isfinite(step_loss)).item():
        optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm, False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    raw_model.after_step()
    return step_loss, grad_norm, True


# -----------------------------------------------------------------------------
# Checkpoints and logs

def save_checkpoint(path, state):
    """Write to a temporary file beside the target, then rename: a crash leaves the old checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_trained_model(path, device="cpu"):
    """(model in eval mode on device, checkpoint) from a train.py checkpoint, for sample.py and the experiments."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("model_name") not in MODELS:
        raise ConfigError(f"{path} is not a checkpoint of this suite's train.py (its model: "
                          f"{checkpoint.get('model_name')}; known: {', '.join(MODELS)})")
    module = MODELS[checkpoint["model_name"]]
    try:
        model = module.Model(module.Config(**in_current_terms(checkpoint["model_config"])))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, AssertionError, RuntimeError) as e:  # saved by another version of the model file
        raise ConfigError(f"{path} does not fit {checkpoint['model_name']}.py as it is now: "
                          f"{str(e).splitlines()[0][:200]}")
    return model.to(device).eval(), checkpoint


def read_log(path):
    """A train.py log.jsonl: its records, one dict per line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -----------------------------------------------------------------------------
# Setting up a run: processes, device, data, model, output folder

@dataclasses.dataclass
class Run:
    """What the loop needs, set up once, and the counters it advances, which every checkpoint saves."""
    s: dict
    ddp: bool = False
    rank: int = 0
    world_size: int = 1
    autocast: object = None
    data: Data = None
    model: torch.nn.Module = None  # the one that trains: compiled, wrapped in DDP, or raw_model itself
    raw_model: torch.nn.Module = None  # evaluated, measured and saved
    optimizer: torch.optim.Optimizer = None
    iter_num: int = 0
    best_val_loss: float = math.inf
    time_s: float = 0.0  # training time: evaluation and checkpoints left out
    last_saved_iter: int = None
    # under DDP the loop's all_reduces use tensors that live as long as the run: gloo can hang at teardown on one
    # freed while its worker thread still holds it
    stop_flag: torch.Tensor = None
    eval_sums: torch.Tensor = None
    wandb: object = None  # the wandb run of --wandb_log true, on rank 0

    @property
    def master(self):
        return self.rank == 0

    @property
    def tokens_per_iter(self):
        return self.s["batch_size"] * self.s["gradient_accumulation_steps"] * self.s["block_size"]

    @property
    def out_dir(self):
        return Path(self.s["out_dir"])


def setup_run(argv):
    """Settings, processes, device, data, model and output folder: the Run that train() continues."""
    s, given = resolve_settings(argv)
    run = Run(s)
    if int(os.environ.get("RANK", -1)) != -1:  # launched by torchrun: one process per GPU (NCCL) or CPU process (gloo)
        dist.init_process_group(backend="nccl" if s["device"].startswith("cuda") else "gloo")
        run.ddp, run.rank, run.world_size = True, dist.get_rank(), dist.get_world_size()
        if s["device"].startswith("cuda"):
            s["device"] = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(s["device"])
        if s["gradient_accumulation_steps"] % run.world_size:
            raise ConfigError(f"gradient_accumulation_steps ({s['gradient_accumulation_steps']}) must be a multiple "
                              f"of the number of processes ({run.world_size})")
    if s["device"].startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:  # denormal floats as zero: trained attention and SiLU tails underflow, where x86 arithmetic is very slow
        torch.set_flush_denormal(True)
    device_type = s["device"].split(":")[0]  # cpu, cuda or mps
    run.autocast = nullcontext() if s["dtype"] == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)
    checkpoint = checkpoint_to_resume(s, given)
    run.data = Data(s, run.master, run.ddp)
    build_model(run, checkpoint)
    if run.master:
        run.wandb = start_wandb(s) if s["wandb_log"] else None  # before any output: a failure leaves none
        start_output(run, resumed=checkpoint is not None)
    return run


def checkpoint_to_resume(s, given):
    """The checkpoint that --resume continues, its settings merged into s (options given now override all but the
    model's), or None for a new run, which must find no run in out_dir."""
    out_dir = Path(s["out_dir"])
    checkpoint = None
    if s["resume"]:
        if not (out_dir / "ckpt.pt").exists():
            raise ConfigError(f"--resume: no checkpoint at {out_dir / 'ckpt.pt'}")
        checkpoint = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
        for key in ("settings", "model_config"):
            checkpoint[key] = in_current_terms(checkpoint[key])
        saved = checkpoint["settings"]
        changed = [f"--{k} {v} (checkpoint: {saved[k]})" for k, v in given.items()
                   if (k == "model" or k in checkpoint["model_config"]) and v != saved[k]]
        if changed:
            raise ConfigError(f"--resume: the checkpoint was trained with other model settings: {', '.join(changed)}; "
                              f"drop them or start a new run in another --out_dir")
        s.update({k: v for k, v in saved.items() if k not in SYSTEM_KEYS})
        s.update({k: v for k, v in given.items() if k != "device"})
    elif (out_dir / "ckpt.pt").exists() or (out_dir / "log.jsonl").exists():
        raise ConfigError(f"{out_dir} already holds a run; continue it with --resume, or use another --out_dir "
                          f"(nothing was changed)")
    existing = next(p for p in (out_dir, *out_dir.resolve().parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK)):
        raise ConfigError(f"cannot write to --out_dir {out_dir}: {existing} is not a writable folder")
    return checkpoint


def build_model(run, checkpoint):
    """The model and its optimizer: fresh from the seed, or as the checkpoint left them, with its RNG state."""
    s, module = run.s, MODELS[run.s["model"]]
    model_args = {f.name: s[f.name] for f in dataclasses.fields(module.Config) if f.name in s}
    model_args["vocab_size"] = run.data.vocab_size
    saved = checkpoint["model_config"] if checkpoint is not None else model_args
    differ = [f"{k} {saved.get(k)} there, {model_args.get(k)} now" for k in sorted(set(saved) | set(model_args))
              if saved.get(k) != model_args.get(k)]
    if differ:  # the data's vocabulary, or an option that the model file no longer has
        raise ConfigError(f"--resume: the checkpoint's model is not what {s['model']}.py builds on {run.data.folder} "
                          f"now: {', '.join(differ)}")
    torch.manual_seed(s["seed"])
    model = module.Model(module.Config(**model_args)).to(s["device"])
    if s["param_dtype"] == "bfloat16":  # the blocks' matrices, as NVIDIA's nGPT code; AdamW's moments follow them
        for p in model.transformer.h.parameters():
            if p.dim() == 2:
                p.data = p.data.to(torch.bfloat16)
    run.optimizer = torch.optim.AdamW(model.optimizer_groups(s["weight_decay"]), lr=s["learning_rate"], eps=s["eps"],
                                      betas=(s["beta1"], s["beta2"]), fused=s["device"].startswith("cuda"))
    if checkpoint is None:
        model.after_step()  # nGPT and anGPT: weights on the sphere / in the ball before the first step
    else:  # not after_step(): normalizing normalized weights again moves their last bits
        model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng_cpu"])
        if s["device"].startswith("cuda") and checkpoint.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng_cuda"])
        run.iter_num, run.best_val_loss, run.time_s = checkpoint["iter_num"], checkpoint["best_val_loss"], checkpoint["time_s"]
        run.last_saved_iter = run.iter_num
    run.raw_model = run.model = model
    if s["compile"]:
        run.model = torch.compile(run.model)
    if run.ddp:
        run.model = DDP(run.model, device_ids=[int(os.environ["LOCAL_RANK"])] if s["device"].startswith("cuda") else None)
        run.stop_flag, run.eval_sums = torch.zeros((), device=s["device"]), torch.zeros(2, device=s["device"])


def start_output(run, resumed):
    """config.json, and a log that is new, or cut back to the checkpoint's step on resume."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(run.s, vocab_size=run.data.vocab_size, tokens_hash=run.data.tokens_hash, world_size=run.world_size,
                    tokens_per_iter=run.tokens_per_iter, num_params=run.raw_model.num_params(), torch=torch.__version__)
    (run.out_dir / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    log_path = run.out_dir / "log.jsonl"
    kept = [r for r in read_log(log_path) if r["iter"] < run.iter_num or (r["iter"] == run.iter_num and "val_loss" in r)
            ] if resumed and log_path.exists() else []
    log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{run.s['model']}: {run.raw_model.num_params() / 1e6:.2f}M parameters, {run.tokens_per_iter:,} tokens per "
          f"step, {run.world_size} process(es) on {run.s['device']}, out_dir {run.out_dir}")


# -----------------------------------------------------------------------------
# The loop's parts: log, checkpoint, evaluation, stopping

def start_wandb(s):
    """--wandb_log true: a wandb run of these settings, which log() sends each record's numbers to."""
    import wandb  # optional, so imported only here; resolve_settings checked that it is installed

    try:
        return wandb.init(project=s["wandb_project"], name=s["wandb_run_name"] or Path(s["out_dir"]).name, config=s)
    except Exception as e:  # not logged in, no network: wandb's own errors
        raise ConfigError(f"--wandb_log true: wandb did not start ({str(e).splitlines()[0][:200]}); run wandb login, "
                          f"or set WANDB_MODE=offline") from None


def log(run, record):
    if run.master:
        with open(run.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if run.wandb:  # one row per optimizer step done (a step record's iter is the index of the step just taken),
            # an eval record's numbers under eval/, so that the two records of one step do not overwrite each other
            evaluation = "val_loss" in record
            run.wandb.log({("eval/" if evaluation else "") + k: v for k, v in record.items()
                           if isinstance(v, (int, float))}, step=record["iter"] + (0 if evaluation else 1))


def save(run):
    """The checkpoint of this step (rank 0 writes it)."""
    if run.master:
        save_checkpoint(run.out_dir / "ckpt.pt", dict(
            model=run.raw_model.state_dict(), optimizer=run.optimizer.state_dict(), model_name=run.s["model"],
            model_config=dataclasses.asdict(run.raw_model.config), settings=run.s, iter_num=run.iter_num,
            best_val_loss=run.best_val_loss, time_s=run.time_s, rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state() if run.s["device"].startswith("cuda") else None))
    run.last_saved_iter = run.iter_num


@torch.no_grad()
def evaluate(run, eval_batches):
    """The mean loss on each split's fixed evaluation batches, of the raw model, shared out over the processes."""
    model, s = run.raw_model, run.s
    model.eval()
    out = {}
    for split, (x, y) in eval_batches.items():
        total = torch.zeros(2, device=x.device) if run.eval_sums is None else run.eval_sums.zero_()  # (losses, count)
        for i in range(run.rank, s["eval_iters"], run.world_size):
            rows = slice(i * s["batch_size"], (i + 1) * s["batch_size"])
            with run.autocast:
                _, loss = model(x[rows], y[rows])
            total += torch.stack((loss.float(), torch.ones((), device=x.device)))
        if run.ddp:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def evaluate_and_save(run, eval_batches, start_wall):
    """The eval record (the losses, the learned scales, the norm-growth paper's metrics) and the checkpoint."""
    losses = evaluate(run, eval_batches)
    probe = eval_batches["val"][0][: max(1, norms.PROBE_TOKENS // run.s["block_size"])]  # for the saturation metrics
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    log(run, dict(iter=run.iter_num, tokens=run.iter_num * run.tokens_per_iter, train_loss=losses["train"],
                  val_loss=losses["val"], lr=get_lr(run.iter_num, run.s), time_s=run.time_s,
                  wall_s=time.time() - start_wall, scales=norms.scale_summary(run.raw_model),
                  **(norms.eval_metrics(run.raw_model, probe) if run.master else {})))
    if run.master:
        print(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    save(run)
    return dict(iter=run.iter_num, train_loss=losses["train"], val_loss=losses["val"], best_val_loss=run.best_val_loss)


def stop_requested(run, signals, start_iter):
    """A signal came, or --max_iters_per_launch steps are done. Under DDP every process stops at the same step,
    agreed on every log_interval steps."""
    s = run.s
    stop = bool(signals) or bool(s["max_iters_per_launch"] and run.iter_num - start_iter >= s["max_iters_per_launch"])
    if not run.ddp:
        return stop
    if run.iter_num % s["log_interval"] != 0:
        return False
    run.stop_flag.fill_(float(stop))
    dist.all_reduce(run.stop_flag, op=dist.ReduceOp.MAX)
    return run.stop_flag.item() > 0


def catch_signals(run, signals):
    """SIGINT (Ctrl-C) and SIGTERM (a job scheduler) stop the run at the next step boundary, with a checkpoint; a
    second one exits at once. Returns the handlers to put back."""
    def handle(signum, frame):  # os.write: a print here could break into one of the loop's
        if signals:
            os.write(2, f"\nstopped at once; the last checkpoint, {run.out_dir / 'ckpt.pt'} (step "
                        f"{run.last_saved_iter}), is the one kept\n".encode())
            os._exit(128 + signum)
        signals.append(signum)
        os.write(1, b"\nstopping after this step, with a checkpoint (again to stop at once)\n")
    return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}


def stop_if_nonfinite(run, first_bad_iter):
    """Act on a non-finite loss or gradient noted on the device (no host sync per step), before a log line or a
    checkpoint can record it."""
    if first_bad_iter.item() >= 0:
        last_good = (f"{run.out_dir / 'ckpt.pt'} (step {run.last_saved_iter})" if run.last_saved_iter is not None
                     else "none was written")
        raise TrainingError(f"the loss or gradient norm became non-finite at step {first_bad_iter.item()}; the last "
                            f"good checkpoint is {last_good}. Resume it with a lower --learning_rate, or skip such "
                            f"steps with --skip_nonfinite N")


def skip_step(run, skipped):
    """--skip_nonfinite N: the step was not taken, as its loss or gradient was not finite; more than N stop the run."""
    if run.master:
        print(f"iter {run.iter_num}: non-finite loss or gradient, step skipped ({skipped} of at most "
              f"{run.s['skip_nonfinite']})")
    log(run, dict(iter=run.iter_num, skipped=True, skipped_total=skipped))
    if skipped > run.s["skip_nonfinite"]:
        raise TrainingError(f"more than --skip_nonfinite {run.s['skip_nonfinite']} steps had a non-finite loss or "
                            f"gradient (the last at step {run.iter_num}); lower --learning_rate")


def micro_batches(run):
    """This process's micro-batches of the step's global batch, a list of (x, y)."""
    s = run.s
    x, y = run.data.batch("train", seed=s["seed"] * 1_000_003 + run.iter_num,
                          count=s["batch_size"] * s["gradient_accumulation_steps"])
    per_process = s["gradient_accumulation_steps"] // run.world_size
    rows = [slice(m * s["batch_size"], (m + 1) * s["batch_size"])
            for m in range(run.rank * per_process, (run.rank + 1) * per_process)]
    return [(x[r], y[r]) for r in rows]


def log_step(run, loss, lr, ms_per_step, mfu, param_norms):
    """The step record (on rank 0 with the parameter-norm metrics) and its line on the console."""
    record = dict(iter=run.iter_num - 1, tokens=run.iter_num * run.tokens_per_iter, loss=loss, lr=lr,
                  ms_per_step=ms_per_step, tokens_per_s=run.tokens_per_iter * 1000 / ms_per_step,
                  time_s=run.time_s, mfu=mfu)
    log(run, dict(record, **param_norms.metrics()) if run.master else record)
    if run.master:
        eta = datetime.timedelta(seconds=round((run.s["max_iters"] - run.iter_num) * ms_per_step / 1000))
        print(f"iter {run.iter_num - 1}: loss {loss:.4f}, lr {lr:.2e}, {ms_per_step:.1f} ms/step, "
              f"{record['tokens_per_s']:,.0f} tok/s, mfu {mfu:.1%}, eta {eta}")


# -----------------------------------------------------------------------------
# The loop

def train(run, signals):
    """Train from run.iter_num to max_iters, or until a signal comes; returns the last evaluation and if it stopped."""
    s = run.s
    eval_batches = run.data.eval_batches(s["seed"], count=s["eval_iters"] * s["batch_size"])
    param_norms = norms.ParamNorms(run.raw_model, remember=run.iter_num == run.last_saved_iter
                                   and run.iter_num % s["log_interval"] == 0)  # dir_cos right after a resume
    flops_per_step = flops_per_token(run.raw_model, s["block_size"]) * run.tokens_per_iter
    device_peak = peak_flops(s["device"], s["dtype"]) * run.world_size
    loss_sum, first_bad_iter = torch.zeros((), device=s["device"]), torch.full((), -1, device=s["device"])
    skipped = skipped_since_log = 0
    start_iter, last_log_iter, start_wall, last_log_time, final = run.iter_num, run.iter_num, time.time(), time.time(), {}
    while True:
        # evaluate and checkpoint every eval_interval steps and at the end (a resumed run did its first already)
        due = run.iter_num % s["eval_interval"] == 0 or run.iter_num == s["max_iters"]
        if due and run.iter_num != run.last_saved_iter:
            stop_if_nonfinite(run, first_bad_iter)
            final = evaluate_and_save(run, eval_batches, start_wall)
            last_log_time = time.time()  # evaluation time does not count as training time
        if run.iter_num >= s["max_iters"]:
            break
        if stop_requested(run, signals, start_iter):
            stop_if_nonfinite(run, first_bad_iter)
            save(run)
            if run.master:
                reason = "interrupted" if signals else f"--max_iters_per_launch {s['max_iters_per_launch']} reached"
                print(f"{reason}: checkpoint of step {run.iter_num} saved in {run.out_dir / 'ckpt.pt'}; continue "
                      f"with: python train.py --model {s['model']} --out_dir {run.out_dir} --resume")
            final = dict(final, iter=run.iter_num, stopped=True)
            break

        # one optimizer step over the global batch, of which this process takes its share of micro-batches
        step_start, lr = time.time(), get_lr(run.iter_num, s)
        logging = (run.iter_num + 1) % s["log_interval"] == 0 or run.iter_num + 1 == s["max_iters"]
        if logging and run.master:
            param_norms.remember()  # the parameters before the step, for rel_step
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm, taken = train_step(run.model, run.optimizer, micro_batches(run), s["grad_clip"], run.autocast,
                                            s["skip_nonfinite"] > 0, run.raw_model)
        if taken:
            finite = torch.isfinite(grad_norm) & torch.isfinite(loss)
            first_bad_iter = torch.where(finite | (first_bad_iter >= 0), first_bad_iter, run.iter_num)
            loss_sum += loss
        else:
            skipped, skipped_since_log = skipped + 1, skipped_since_log + 1
            skip_step(run, skipped)
        run.iter_num += 1
        run.time_s += time.time() - step_start

        if logging:  # the mean loss since the last log line, over all processes: the loop's one host sync
            stop_if_nonfinite(run, first_bad_iter)
            steps, counted = run.iter_num - last_log_iter, max(1, run.iter_num - last_log_iter - skipped_since_log)
            if run.ddp:
                dist.all_reduce(loss_sum)
            mean_loss, skipped_since_log = loss_sum.item() / counted / run.world_size, 0
            loss_sum.zero_()
            ms_per_step = (time.time() - last_log_time) * 1000 / steps
            last_log_iter, last_log_time = run.iter_num, time.time()
            log_step(run, mean_loss, lr, ms_per_step, flops_per_step / (ms_per_step / 1000) / device_peak, param_norms)
    return final


def main(argv=None):
    run = setup_run(argv)
    start, signals = time.time(), []
    previous_handlers = catch_signals(run, signals)
    try:
        final = train(run, signals)
    finally:  # also when the loss became non-finite: a sweep goes on to its next run in this process
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if run.wandb:
            run.wandb.finish()
    if run.master and not final.get("stopped"):
        print(f"done in {datetime.timedelta(seconds=round(time.time() - start))}: final val loss "
              f"{final.get('val_loss', math.nan):.4f}, best {run.best_val_loss:.4f}")
    if run.ddp:
        # the DDP wrapper goes first, while its process group is alive; then every process waits for rank 0 to
        # finish writing (a process that tears gloo down while its peer is still busy aborts)
        run.model = run.raw_model
        dist.barrier()
        dist.destroy_process_group()
    return final


def run_main(main, prog):
    """A script's main(), with a mistake of the user's printed as one line: exit status 2 (1: a non-finite loss)."""
    try:
        main()
    except (ConfigError, prepare_data.DataError, TrainingError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1 if isinstance(e, TrainingError) else 2)


if __name__ == "__main__":
    run_main(main, "train.py")
