"""Shared fixtures: where things are, a small character-level dataset, and a tiny training run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # test data beside the clone, read-only
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
TIKTOKEN_CACHE = SHARED / "data" / "tiktoken_cache"

sys.path.insert(0, str(REPO))

# tiny sizes every test run can afford on two CPU cores
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
        "--eval_iters", "2", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory):
    """(data_dir, name) of the first 100k characters of tiny Shakespeare, prepared as nanoGPT would."""
    import prepare_data

    folder = tmp_path_factory.mktemp("data")
    text = folder / "shakespeare_100k.txt"
    text.write_text(TINYSHAKESPEARE.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    prepare_data.prepare_file(text, name="shakespeare_100k", tokenizer="char", data_dir=folder)
    return str(folder), "shakespeare_100k"


def run_script(*args, env=None, timeout=300):
    """Run one of the repo's scripts in a fresh interpreter, as a user would."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
