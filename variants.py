"""
The models that compare.py and bench.py put side by side: a model file and the train.py options that make each
one, with its name and colour in the tables and plots. Defined once, here, for every script that shows them.
"""

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
