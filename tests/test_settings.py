"""settings.py: where each of train.py's settings comes from, and what --help shows."""

import pytest

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import settings


def test_settings_come_from_preset_then_recipe_then_command_line():
    s, module, _ = settings.resolve_settings(["--model", "gpt", "--device", "cpu"])
    assert (s["preset"], s["n_layer"], s["n_embd"], s["block_size"], s["batch_size"], s["max_iters"]) == \
        ("cpu", 4, 128, 64, 12, 2000)
    assert s["learning_rate"] == module.RECIPE["learning_rate"] and s["weight_decay"] == module.RECIPE["weight_decay"]
    assert s["min_lr"] == pytest.approx(s["learning_rate"] * module.RECIPE["min_lr_ratio"])
    s, _, _ = settings.resolve_settings(["--model", "gpt", "--device", "cpu", "--preset", "gpu", "--n_layer=3",
                                   "--learning_rate", "1e-2", "--qk_norm", "true"])
    assert (s["n_layer"], s["n_embd"], s["block_size"], s["learning_rate"], s["qk_norm"]) == (3, 384, 256, 1e-2, "true")
    assert s["out_dir"] == "out/gpt"


def test_help_shows_the_defaults_of_every_preset_and_model():
    help_text = settings.build_parser().format_help()
    assert "cpu 2000, gpu 5000" in help_text  # --max_iters by preset
    assert "gpt 0.1" in help_text  # --weight_decay from gpt's RECIPE
    assert "--qk_norm" in help_text and "--rope" in help_text


def test_the_fineweb_preset_fits_the_readmes_hour_on_one_h100():
    import torch

    import train

    s, module, _ = settings.resolve_settings(["--model", "gpt", "--preset", "fineweb", "--device", "cpu"])
    assert (s["dataset"], s["block_size"], s["n_layer"], s["n_embd"]) == ("fineweb10B", 1024, 12, 768)
    tokens = s["batch_size"] * s["gradient_accumulation_steps"] * s["block_size"] * s["max_iters"]
    assert tokens == 262_144_000  # the README's 262M tokens per run
    with torch.device("meta"):
        model = module.Model(module.Config(**{k: s[k] for k in ("n_layer", "n_head", "n_embd", "block_size")},
                                           vocab_size=50304))
    flops = train.flops_per_token(model, s["block_size"])
    assert round(flops / 1e9, 2) == 1.02 and round(model.num_params() / 1e6) == 191
    minutes = flops * tokens * 5 / (0.4 * 989e12) / 60  # compare.py's five models at 40% MFU of an H100
    assert round(minutes) == 57
