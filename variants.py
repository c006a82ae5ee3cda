"""
The models that compare.py, norms.py and bench.py put side by side: a model file and the train.py options that make
each one, with its name and colour in the tables and plots; and how to find and name the runs train.py wrote. Defined
once, here, below every script that uses them.
"""

import json
from pathlib import Path

# key: (model file, train.py options, name in tables and plots)
VARIANTS = {
    "gpt": ("gpt", [], "GPT"),
    "gpt_qk": ("gpt", ["--qk_norm", "true"], "GPT+QK-norm"),  # the anGPT paper's GPT+: L2 norms and a gain g
    "gpt_qk_rms": ("gpt", ["--qk_norm", "rms"], "GPT+QK-RMSNorm"),  # RMSNorm on q and k, per-channel gains
    "ngpt": ("ngpt", [], "nGPT"),
    "angpt": ("angpt", [], "anGPT"),
    # Merrill et al.'s sqrt(t) norm growth needs no weight decay and a constant LR; the recipe's decay hides it
    "gpt_const": ("gpt", ["--weight_decay", "0", "--decay_lr", "false"], "GPT, no decay, const LR"),
}
ARCHITECTURES = ("gpt", "gpt_qk", "gpt_qk_rms", "ngpt", "angpt")  # differ in the model; gpt_const in its recipe
COLORS = {"gpt": "#333333", "gpt_qk": "#1f77b4", "gpt_qk_rms": "#17becf", "ngpt": "#2ca02c", "angpt": "#d62728",
          "gpt_const": "#9467bd"}  # baseline in gray


def label(key):
    return VARIANTS[key][2] if key in VARIANTS else key


def config_options(key):
    """An architecture's options as fields of its model file's Config ({"qk_norm": "true"}), for building it
    without train.py's parser, as bench.py does."""
    assert key in ARCHITECTURES, f"{key} differs from its model file in train.py settings, not in the model"
    options = VARIANTS[key][1]
    return {option[2:]: value for option, value in zip(options[::2], options[1::2])}


def variant_of(config):
    """The VARIANTS key of a run's settings (its config.json): the most specific variant whose model file and
    options they match. A run that lacks an option (logged before the option existed) does not match it."""
    def matches(options):
        for option, text in zip(options[::2], options[1::2]):
            value = config.get(option[2:])
            if value is None or value != ((text == "true") if isinstance(value, bool) else type(value)(text)):
                return False
        return True
    found = [key for key, (model, options, _) in VARIANTS.items() if model == config["model"] and matches(options)]
    return max(found, key=lambda key: len(VARIANTS[key][1])) if found else config["model"]


def read_log(path):
    """A train.py log.jsonl: its records, one dict per line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_folders(paths, holding="log.jsonl"):
    """train.py run folders (with a log.jsonl, or another file they hold) among `paths`, or inside them, such as
    compare.py's runs/."""
    found = []
    for path in map(Path, paths):
        if (path / holding).exists():
            found.append(path)
        elif any(path.glob(f"*/{holding}")):
            found += sorted(p.parent for p in path.glob(f"*/{holding}"))
        else:
            raise FileNotFoundError(f"--runs {path}: no {holding} in it or in its subfolders")
    return found


def read_run_log(folder):
    """A run folder's settings, log records, and eval records (sorted by step, one per step: a resumed run may
    repeat one)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    records = read_log(Path(folder) / "log.jsonl")
    evals = {r["iter"]: r for r in records if "val_loss" in r}
    return config, records, [evals[it] for it in sorted(evals)]
