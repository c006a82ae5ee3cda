"""
The one training loop for every model in this suite: GPT (gpt.py), nGPT (ngpt.py) and anGPT (angpt.py).

On a laptop or any CPU (the "cpu" preset: tiny Shakespeare characters, 4 layers, width 128, about 2 minutes):
$ python train.py --model gpt

On one GPU (the "gpu" preset: nanoGPT's shakespeare_char config, 6 layers, width 384, context 256):
$ python train.py --model ngpt

A paper-like run (GPT-2 BPE OpenWebText, context 1024, 512 sequences per step) on 8 GPUs of one node:
$ python prepare_data.py openwebtext
$ torchrun --standalone --nproc_per_node=8 train.py --model angpt --preset owt

Any option overrides the preset and the model's recipe (settings.py resolves them; `python train.py --help` lists
every option with its defaults):
$ python train.py --model ngpt --max_iters 500 --learning_rate 4e-3 --out_dir out/ngpt-short

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

import dataclasses
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
from settings import MODELS, SYSTEM_KEYS, ConfigError, load_model_module, resolve_settings
from variants import read_log


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss); reported as one line, exit code 1."""


# -----------------------------------------------------------------------------
# Data: nanoGPT's format (train.bin/val.bin of uint16 token ids and an optional meta.pkl), or token shards
# (FineWeb's, as the modded-nanogpt speedrun has them); prepare_data.read_tokens reads both

def dataset_dir(s):
    """The folder with the dataset's tokens, preparing a known dataset the first time it is used."""
    folder = Path(s["data_dir"]) / s["dataset"]
    if not prepare_data.has_tokens(folder):
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
            tokens = self.tokens(split)
            if len(tokens) <= block_size:
                raise ConfigError(f"the {split} split in {folder} has {len(tokens)} tokens, not more than block_size "
                                  f"{block_size}; use a smaller --block_size or more data")
            # ids beyond the vocabulary would index outside the embedding; a split of up to 256M tokens is checked
            # whole here (a second or so), a bigger one batch by batch in get()
            if len(tokens) <= 2**28:
                self.check_ids(split, tokens)

    def check_ids(self, split, tokens):
        if tokens.max() >= self.vocab_size:
            raise ConfigError(f"the {split} split in {self.folder} holds token id {int(tokens.max())}, but the "
                              f"vocabulary has {self.vocab_size} ids; its meta.pkl belongs to other data: prepare it again")

    def tokens(self, split):
        # fresh memmaps per call, as nanoGPT does, so that memory does not grow over a long run
        return prepare_data.read_tokens(self.folder, split)

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
    targets, (count, length) int64 each, on the CPU. The training batches and extrapolate.py's evaluation at other
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
# The training step

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


# -----------------------------------------------------------------------------
# Checkpoints

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
    """(model in eval mode on device, checkpoint) from a train.py checkpoint, as sample.py and extrapolate.py read it.
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
# Setting up a run: processes, device, data, model, output folder

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


def setup_device(s):
    """The autocast context of s["dtype"] (none for float32), with the device's arithmetic set up."""
    device_type = "cuda" if s["device"].startswith("cuda") else "cpu"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # CPU: treat denormal floats (below 1.2e-38) as zero. Attention probabilities and SiLU tails underflow into
        # that range in trained models, where x86 arithmetic is many times slower: anGPT's steps took 13% longer
        torch.set_flush_denormal(True)
    return nullcontext() if s["dtype"] == "float32" else torch.autocast(device_type=device_type, dtype=torch.bfloat16)


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


def open_data(s, master, ddp):
    """The dataset's Batches; rank 0 prepares the data first if it is missing."""
    folder = dataset_dir(s) if master else Path(s["data_dir"]) / s["dataset"]
    if ddp:
        dist.barrier()  # rank 0 may have prepared the data
    return Batches(folder, s["block_size"], read_vocab_size(folder), s["device"])


def build_model(module, s, batches, checkpoint=None):
    """(model, optimizer): fresh from the seed, or as the checkpoint left them, with the RNG state it saved."""
    model_args = {f.name: s[f.name] for f in dataclasses.fields(module.Config) if f.name in s}
    model_args["vocab_size"] = batches.vocab_size
    if checkpoint is not None and model_args != checkpoint["model_config"]:
        raise ConfigError(f"--resume: the data in {batches.folder} gives vocab_size {batches.vocab_size}, but the "
                          f"checkpoint was trained with {checkpoint['model_config']['vocab_size']}")
    torch.manual_seed(s["seed"])
    model = module.Model(module.Config(**model_args)).to(s["device"])
    optimizer = torch.optim.AdamW(model.optimizer_groups(s["weight_decay"]), lr=s["learning_rate"],
                                  betas=(s["beta1"], s["beta2"]), eps=s["eps"], fused=s["device"].startswith("cuda"))
    if checkpoint is None:
        model.after_step()  # nGPT and anGPT: weights on the sphere / in the ball before the first step
        return model, optimizer
    # not after_step() on resume: normalizing normalized weights again moves their last bits
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng_cpu"])
    if s["device"].startswith("cuda") and checkpoint.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"])
    return model, optimizer


@dataclasses.dataclass
class Run:
    """What the loop needs, set up once (setup_run), and the counters it advances, which every checkpoint saves."""
    s: dict
    model: torch.nn.Module  # the one that trains: compiled, wrapped in DDP, or raw_model itself
    raw_model: torch.nn.Module  # evaluated, measured and saved
    optimizer: torch.optim.Optimizer
    batches: Batches
    autocast: object
    ddp: bool
    rank: int
    world_size: int
    iter_num: int = 0
    best_val_loss: float = math.inf
    time_s: float = 0.0  # training time: evaluation and checkpoints left out
    last_saved_iter: int = None
    # Under DDP the loop's own all_reduces (the stop flag, the evaluation sums) use these two tensors, which live as
    # long as the run. A tensor whose Python object dies while gloo's worker thread still holds it is freed by that
    # thread under the GIL, and at teardown the main thread waits for that thread while holding the GIL: a deadlock
    stop_flag: torch.Tensor = None
    eval_sums: torch.Tensor = None

    @property
    def master(self):
        return self.rank == 0

    @property
    def tokens_per_iter(self):
        return self.s["batch_size"] * self.s["gradient_accumulation_steps"] * self.s["block_size"]

    @property
    def out_dir(self):
        return Path(self.s["out_dir"])


def setup_run(s, module, given):
    ddp, rank, world_size = start_processes(s)
    if s["gradient_accumulation_steps"] % world_size != 0:
        raise ConfigError(f"gradient_accumulation_steps ({s['gradient_accumulation_steps']}) must be a multiple "
                          f"of the number of processes ({world_size})")
    autocast = setup_device(s)
    checkpoint = checkpoint_to_resume(s, given, Path(s["out_dir"]))
    batches = open_data(s, rank == 0, ddp)
    model, optimizer = build_model(module, s, batches, checkpoint)
    run = Run(s, model, model, optimizer, batches, autocast, ddp, rank, world_size)
    if checkpoint is not None:
        run.iter_num, run.best_val_loss, run.time_s = checkpoint["iter_num"], checkpoint["best_val_loss"], checkpoint["time_s"]
        run.last_saved_iter = run.iter_num
    if s["compile"]:
        run.model = torch.compile(run.model)
    if ddp:
        run.model = DDP(run.model, device_ids=[int(os.environ["LOCAL_RANK"])] if s["device"].startswith("cuda") else None)
        run.stop_flag, run.eval_sums = torch.zeros((), device=s["device"]), torch.zeros(2, device=s["device"])
    if run.master:
        start_output(run)
    return run


def start_output(run):
    """config.json, and a log that is new, or cut back to the checkpoint's step on resume (the resumed run writes
    the later records again)."""
    try:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out_dir {run.out_dir}: {e.strerror}")
    settings = dict(run.s, vocab_size=run.batches.vocab_size, world_size=run.world_size,
                    tokens_per_iter=run.tokens_per_iter, num_params=run.raw_model.num_params(), torch=torch.__version__)
    (run.out_dir / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    log_path = run.out_dir / "log.jsonl"
    if run.last_saved_iter is None:
        log_path.write_text("")
    elif log_path.exists():
        kept = [r for r in read_log(log_path) if r["iter"] < run.iter_num or (r["iter"] == run.iter_num and "val_loss" in r)]
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{run.s['model']}: {run.raw_model.num_params() / 1e6:.2f}M parameters, {run.tokens_per_iter:,} tokens per "
          f"step, {run.world_size} process(es) on {run.s['device']}, out_dir {run.out_dir}")


def log(run, record):
    if run.master:
        with open(run.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def save(run):
    """The checkpoint of this step (rank 0 writes it)."""
    if run.master:
        device_type = "cuda" if run.s["device"].startswith("cuda") else "cpu"
        save_checkpoint(run.out_dir / "ckpt.pt", dict(
            model=run.raw_model.state_dict(), optimizer=run.optimizer.state_dict(), model_name=run.s["model"],
            model_config=dataclasses.asdict(run.raw_model.config), settings=run.s, iter_num=run.iter_num,
            best_val_loss=run.best_val_loss, time_s=run.time_s, rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None))
    run.last_saved_iter = run.iter_num


# -----------------------------------------------------------------------------
# The loop's parts: evaluate and save, one step, its log record

@torch.no_grad()
def evaluate(model, eval_batches, s, autocast, rank=0, world_size=1, sums=None):
    """The mean loss on each split's fixed evaluation batches, shared out over the processes (summed with
    all_reduce under DDP, into `sums`: Run.eval_sums). model is the raw model, neither compiled nor DDP-wrapped; it
    is left in training mode."""
    model.eval()
    out = {}
    for split, (x, y) in eval_batches.items():
        # (sum of losses, count) over this process's share
        total = torch.zeros(2, device=x.device) if sums is None else sums.zero_()
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


def evaluate_and_save(run, eval_batches, probe, start_wall):
    """The eval record (losses, learned scales, the norm-growth paper's metrics) and the checkpoint of this step."""
    losses = evaluate(run.raw_model, eval_batches, run.s, run.autocast, run.rank, run.world_size, run.eval_sums)
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    metrics = norms.eval_metrics(run.raw_model, probe, run.s["model"]) if run.master else {}
    log(run, dict(iter=run.iter_num, tokens=run.iter_num * run.tokens_per_iter, train_loss=losses["train"],
                  val_loss=losses["val"], lr=get_lr(run.iter_num, run.s), time_s=run.time_s,
                  wall_s=time.time() - start_wall, scales=norms.scale_summary(run.raw_model), **metrics))
    if run.master:
        print(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    save(run)
    return dict(iter=run.iter_num, train_loss=losses["train"], val_loss=losses["val"], best_val_loss=run.best_val_loss)


def stop_requested(run, stop_requests, start_iter):
    """Whether to stop here: a signal came, or --max_iters_per_launch steps are done. Under DDP every process
    stops at the same step, agreed on every log_interval steps."""
    s = run.s
    launch_done = s["max_iters_per_launch"] and run.iter_num - start_iter >= s["max_iters_per_launch"]
    if not run.ddp:
        return bool(stop_requests) or bool(launch_done)
    if run.iter_num % s["log_interval"] != 0:
        return False
    run.stop_flag.fill_(float(bool(stop_requests) or bool(launch_done)))
    dist.all_reduce(run.stop_flag, op=dist.ReduceOp.MAX)
    return run.stop_flag.item() > 0


class StepLog:
    """What the step records need between log lines: the loss summed on the device (no host sync per step), the
    skipped steps, the time, and the parameters for the norm metrics. A non-finite loss or gradient is noted on
    the device and acted on at the next log line or checkpoint, which it must never reach (--skip_nonfinite instead
    checks every step and skips bad ones)."""

    def __init__(self, run):
        self.run = run
        self.loss_sum = torch.zeros((), device=run.s["device"])
        self.first_bad_iter = torch.full((), -1, dtype=torch.long, device=run.s["device"])
        self.skipped = self.skipped_since_log = 0
        self.last_log_time, self.last_log_iter = time.time(), run.iter_num
        self.tracked, self.last_logged, self.before_step = norms.norm_group(run.raw_model), None, None
        if run.last_saved_iter is not None and run.iter_num % run.s["log_interval"] == 0:
            # resumed right after a step record: its parameters are the ones that record saw (for dir_cos)
            self.last_logged = [p.detach().float().clone() for _, p in self.tracked]
        self.flops_per_step = flops_per_token(run.raw_model, run.s["block_size"]) * run.tokens_per_iter
        self.device_peak = peak_flops(run.s["device"], run.s["dtype"]) * run.world_size

    def stop_if_nonfinite(self):
        bad = int(self.first_bad_iter.item())
        if bad >= 0:
            run = self.run
            last_good = (f"{run.out_dir / 'ckpt.pt'} (step {run.last_saved_iter})" if run.last_saved_iter is not None
                         else "none was written")
            raise TrainingError(f"the loss or gradient norm became non-finite at step {bad}; the last good checkpoint is "
                                f"{last_good}. Resume it with a lower --learning_rate, or skip such steps "
                                f"with --skip_nonfinite N")

    def remember_weights(self):
        if self.run.master:
            self.before_step = [p.detach().float().clone() for _, p in self.tracked]

    def count(self, step_loss, grad_norm, taken):
        run, limit = self.run, self.run.s["skip_nonfinite"]
        if taken:
            finite = torch.isfinite(grad_norm) & torch.isfinite(step_loss)
            self.first_bad_iter = torch.where(finite | (self.first_bad_iter >= 0), self.first_bad_iter, run.iter_num)
            self.loss_sum += step_loss
            return
        self.skipped += 1
        self.skipped_since_log += 1
        if run.master:
            print(f"iter {run.iter_num}: non-finite loss or gradient, step skipped ({self.skipped} of at most {limit})")
        log(run, dict(iter=run.iter_num, skipped=True, skipped_total=self.skipped))
        if self.skipped > limit:
            raise TrainingError(f"more than --skip_nonfinite {limit} steps had a non-finite loss or "
                                f"gradient (the last at step {run.iter_num}); lower --learning_rate")

    def write(self, lr):
        """The step record of the steps since the last one: the mean loss over them and all processes (the only
        host sync in the loop), the speed, and the parameter-norm metrics."""
        run = self.run
        self.stop_if_nonfinite()
        steps = run.iter_num - self.last_log_iter
        counted, self.skipped_since_log = max(1, steps - self.skipped_since_log), 0
        if run.ddp:
            dist.all_reduce(self.loss_sum)
        mean_loss = self.loss_sum.item() / counted / run.world_size
        self.loss_sum.zero_()
        now = time.time()
        ms_per_step = (now - self.last_log_time) * 1000 / steps
        self.last_log_time, self.last_log_iter = now, run.iter_num
        record = dict(iter=run.iter_num - 1, tokens=run.iter_num * run.tokens_per_iter, loss=mean_loss, lr=lr,
                      ms_per_step=ms_per_step, tokens_per_s=run.tokens_per_iter * 1000 / ms_per_step,
                      time_s=run.time_s, mfu=self.flops_per_step / (ms_per_step / 1000) / self.device_peak)
        if run.master:
            record.update(norms.norm_metrics(self.tracked, self.before_step, self.last_logged))
            self.last_logged = [p.detach().float().clone() for _, p in self.tracked]
        log(run, record)
        if run.master:
            eta = (run.s["max_iters"] - run.iter_num) * ms_per_step / 1000
            print(f"iter {run.iter_num - 1}: loss {mean_loss:.4f}, lr {lr:.2e}, {ms_per_step:.1f} ms/step, "
                  f"{record['tokens_per_s']:,.0f} tok/s, mfu {record['mfu']:.1%}, eta {fmt_duration(eta)}")


def step(run, step_log):
    """One optimizer step over gradient_accumulation_steps micro-batches of the global batch, and its step record
    every log_interval steps."""
    s, start = run.s, time.time()
    logging = (run.iter_num + 1) % s["log_interval"] == 0 or run.iter_num + 1 == s["max_iters"]
    if logging:
        step_log.remember_weights()
    lr = get_lr(run.iter_num, s)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x_all, y_all = run.batches.get("train", seed=s["seed"] * 1_000_003 + run.iter_num,
                                   count=s["batch_size"] * s["gradient_accumulation_steps"])
    micro_steps = s["gradient_accumulation_steps"] // run.world_size  # this process's rows of the batch:
    mine = [slice(m * s["batch_size"], (m + 1) * s["batch_size"])
            for m in range(run.rank * micro_steps, (run.rank + 1) * micro_steps)]
    step_log.count(*train_step(run.model, run.optimizer, [(x_all[rows], y_all[rows]) for rows in mine],
                               s["grad_clip"], run.autocast, s["skip_nonfinite"] > 0, run.raw_model))
    run.iter_num += 1
    run.time_s += time.time() - start
    if logging:
        step_log.write(lr)


# -----------------------------------------------------------------------------

def main(argv=None):
    s, module, given = resolve_settings(argv)
    run = setup_run(s, module, given)
    # the evaluation batches are drawn once and reused, so that successive evaluations are comparable
    eval_batches = {split: run.batches.get(split, seed=s["seed"] + 1 + k, count=s["eval_iters"] * s["batch_size"])
                    for k, split in enumerate(("train", "val"))}
    probe = eval_batches["val"][0][: max(1, norms.PROBE_TOKENS // s["block_size"])]  # for the saturation metrics
    step_log = StepLog(run)
    # SIGINT (Ctrl-C) and SIGTERM (a job scheduler) end the run cleanly at the next step boundary
    stop_requests = []
    previous_handlers = {sig: signal.signal(sig, lambda signum, frame: stop_requests.append(signum))
                         for sig in (signal.SIGINT, signal.SIGTERM)}
    resumed, start_iter, start_wall = run.last_saved_iter is not None, run.iter_num, time.time()
    final = {}

    while True:
        # evaluate and checkpoint every eval_interval steps and at the end (the resumed start was done already)
        due = run.iter_num % s["eval_interval"] == 0 or run.iter_num == s["max_iters"]
        if due and not (resumed and run.iter_num == start_iter):
            step_log.stop_if_nonfinite()
            final = evaluate_and_save(run, eval_batches, probe, start_wall)
            step_log.last_log_time = time.time()  # evaluation time does not count as training time
        if run.iter_num >= s["max_iters"]:
            break
        if stop_requested(run, stop_requests, start_iter):
            step_log.stop_if_nonfinite()
            save(run)
            if run.master:
                reason = "interrupted" if stop_requests else f"--max_iters_per_launch {s['max_iters_per_launch']} reached"
                print(f"{reason}: checkpoint of step {run.iter_num} saved in {run.out_dir / 'ckpt.pt'}; continue "
                      f"with: python train.py --model {s['model']} --out_dir {run.out_dir} --resume")
            final = dict(final, iter=run.iter_num, stopped=True)
            break
        step(run, step_log)

    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)
    if run.master and not final.get("stopped"):
        print(f"done: {run.iter_num - start_iter} steps in {fmt_duration(time.time() - start_wall)}, "
              f"final val loss {final.get('val_loss', float('nan')):.4f}, best {run.best_val_loss:.4f}")
    if run.ddp:
        # the DDP wrapper goes first, while the process group it holds is still alive; then every process waits for
        # rank 0 to finish writing (a process that tears gloo down while its peer is still busy aborts)
        run.model = run.raw_model
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
