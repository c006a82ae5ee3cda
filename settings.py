"""
train.py's settings: the defaults, the presets, each model file's RECIPE and the command line, resolved into one
dict, with a clear one-line error for every bad value before anything runs.

Any option overrides the preset and the model's recipe, as --key value or --key=value:
$ python train.py --model ngpt --max_iters 500 --learning_rate 4e-3 --out_dir out/ngpt-short

Settings are resolved in this order, later ones winning: the preset (sizes, data, schedule length; picked by
the device unless --preset says otherwise), the model file's RECIPE (learning rate, warmup, weight decay,
betas, eps, gradient clipping: each paper's own recipe), the model's Config defaults (model options such as
--rope), then the command line. `python train.py --help` lists every option with its defaults.
"""

import argparse
import dataclasses
import difflib
import importlib
import os
from pathlib import Path

import torch

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
    # the papers' regime on one GPU: web text in GPT-2 BPE (FineWeb's 10B sample, the speedrun's shards), context
    # 1k, GPT-2 small's width and depth, 128 sequences (131k tokens) per step, 2000 steps = 262M tokens per run:
    # at 1.02 GFLOP per token and 40% MFU of an H100, compare.py's five models in about an hour (README, "One GPU")
    "fineweb": dict(dataset="fineweb10B", n_layer=12, n_head=12, n_embd=768, block_size=1024,
                    batch_size=32, gradient_accumulation_steps=4, max_iters=2000, eval_interval=100,
                    eval_iters=20, log_interval=10, compile=True),
}


class ConfigError(Exception):
    """A problem with the user's settings or files, reported as one line without a traceback."""


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
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
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


# options of a run that --resume may change, or that it takes from the new command line
SYSTEM_KEYS = ("device", "dtype", "compile", "out_dir", "resume", "max_iters_per_launch", "skip_nonfinite")
