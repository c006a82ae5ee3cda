"""variants.py: every variant is a model file and options that train.py and the model's Config accept."""

import dataclasses

import pytest

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import settings
import variants


@pytest.mark.parametrize("key", variants.VARIANTS)
def test_every_variant_is_a_model_file_and_options_train_py_accepts(key):
    file, options, name = variants.VARIANTS[key]
    assert file in settings.MODELS and name and key in variants.COLORS
    parsed = vars(settings.build_parser().parse_args(["--model", file, *options]))
    for option, text in zip(options[::2], options[1::2]):
        value = parsed[option[2:]]
        assert value == (settings.parse_bool(text) if isinstance(value, bool) else type(value)(text)), option


@pytest.mark.parametrize("key", variants.ARCHITECTURES)
def test_each_architecture_builds_from_its_config_options(key):
    module = settings.load_model_module(variants.VARIANTS[key][0])
    fields = {f.name for f in dataclasses.fields(module.Config)}
    options = variants.config_options(key)
    assert set(options) <= fields
    config = module.Config(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, **options)
    assert all(getattr(config, name) == value for name, value in options.items())


def test_recipe_variants_have_no_config_options():
    with pytest.raises(AssertionError, match="gpt_const"):
        variants.config_options("gpt_const")


def test_runs_are_named_by_the_variant_their_settings_match():
    gpt = settings.resolve_settings(["--model", "gpt"])[0]
    assert variants.variant_of(gpt) == "gpt"
    assert variants.variant_of(dict(gpt, qk_norm="true")) == "gpt_qk"
    assert variants.variant_of(dict(gpt, qk_norm="rms")) == "gpt_qk_rms"
    assert variants.variant_of(dict(gpt, weight_decay=0.0, decay_lr=False)) == "gpt_const"
    assert variants.variant_of(dict(gpt, weight_decay=0.0)) == "gpt"  # decaying LR: not the sqrt(t) setting
    older = {k: v for k, v in gpt.items() if k != "decay_lr"}  # a run logged before --decay_lr existed
    assert variants.variant_of(older) == "gpt"
    assert variants.variant_of(settings.resolve_settings(["--model", "ngpt"])[0]) == "ngpt"


def test_run_folders_finds_runs_and_names_a_folder_without_any(tmp_path):
    for name in ("gpt-s0", "ngpt-s0"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "log.jsonl").write_text('{"iter": 0}\n\n{"iter": 1}\n')
    assert variants.run_folders([tmp_path / "runs"]) == [tmp_path / "runs" / "gpt-s0", tmp_path / "runs" / "ngpt-s0"]
    assert variants.run_folders([tmp_path / "runs" / "ngpt-s0"]) == [tmp_path / "runs" / "ngpt-s0"]
    assert variants.read_log(tmp_path / "runs" / "gpt-s0" / "log.jsonl") == [{"iter": 0}, {"iter": 1}]
    with pytest.raises(FileNotFoundError, match="no log.jsonl in it or in its subfolders"):
        variants.run_folders([tmp_path])
