"""
Sample text from a checkpoint written by train.py (any model: gpt, ngpt, angpt).

$ python sample.py --out_dir out/gpt --num_samples 3
$ python sample.py --out_dir out/ngpt --start "ROMEO:" --max_new_tokens 300 --temperature 0.8
$ python sample.py --out_dir out/angpt --start FILE:prompt.txt

The tokenizer is the one the checkpoint was trained with: the dataset's meta.pkl for character-level data,
GPT-2 BPE (tiktoken) otherwise, as in nanoGPT.
"""

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

import prepare_data
import train
from train import ConfigError


def load_model(out_dir, device):
    """The model of <out_dir>/ckpt.pt and the settings it was trained with."""
    path = Path(out_dir) / "ckpt.pt"
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}; train one with: python train.py --model gpt --out_dir {out_dir}")
    model, checkpoint = train.load_trained_model(path, device)
    return model, checkpoint["settings"]


def load_tokenizer(data_folder, data_dir):
    """(encode, decode) for the dataset the model was trained on."""
    meta = prepare_data.read_meta(data_folder)
    if "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise ConfigError(f"--start has characters the model never saw: {''.join(unknown)!r}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(itos[i] for i in ids)
    enc = prepare_data.get_gpt2_encoding(data_dir)
    return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode


def main(argv=None):
    p = argparse.ArgumentParser(prog="sample.py", description="Sample text from a train.py checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", default="out/gpt", help="folder holding ckpt.pt")
    p.add_argument("--start", default="\n", help='prompt text, or FILE:path to read it from a file')
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="<1 is more conservative, >1 more random")
    p.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", default=None, help="where the dataset's meta.pkl is (default: the training run's)")
    args = p.parse_args(argv)
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, got {args.temperature}")
    if args.num_samples < 1 or args.max_new_tokens < 1 or args.top_k < 1:
        raise ConfigError("--num_samples, --max_new_tokens and --top_k must be at least 1")

    torch.manual_seed(args.seed)
    model, settings = load_model(args.out_dir, args.device)
    data_dir = Path(args.data_dir or settings["data_dir"])
    encode, decode = load_tokenizer(data_dir / settings["dataset"], data_dir)
    start = args.start
    if start.startswith("FILE:"):
        try:
            start = Path(start[5:]).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read the prompt file: {e}")
    start_ids = encode(start)
    if not start_ids:
        raise ConfigError("--start is empty; give at least one character")
    x = torch.tensor(start_ids, dtype=torch.long, device=args.device)[None, ...]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else nullcontext())
    with autocast:
        for _ in range(args.num_samples):
            y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
            print(decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    train.run_main(main, "sample.py")
