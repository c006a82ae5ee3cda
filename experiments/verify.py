"""
Does this GPU run the suite as it should, and how fast is each model on it? One command, under about 8 minutes on
one H100-class GPU, with no network once tiny Shakespeare is prepared (`python prepare_data.py`):
$ python -m experiments.verify --out_dir results/gpu

1. the CUDA tests (tests/test_cuda.py): every model under bf16 autocast, torch.compile without graph breaks, nGPT's
   norm kernel, fused AdamW, and a train.py run that writes its log and checkpoint and resumes;
2. experiments/bench.py at GPT-2 small's shape (12 layers, width 768, context 1024, batch 16), bf16, compiled,
   with a second GPT as the control: ms per step, tokens/s, MFU, and each model's ratio to GPT and to GPT+QK-norm;
3. GPT, GPT+QK-norm, nGPT and anGPT at the gpu preset (6 layers, width 384, context 256) for 500 steps, one seed,
   eager: the convergence plot and the steps-to-target table of compare.py.

Writes into --out_dir: verify.md (the three results and the commands), bench.json, and compare.py's outputs
(convergence.png, results.md, results.json, runs/).

Without a GPU the same command runs at a tiny size, which is how the test suite runs it (the CUDA tests then say
that they were skipped, and why):
$ python -m experiments.verify --device cpu --out_dir verify_out
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import compare
import train

REPO = Path(__file__).resolve().parents[1]
MODELS = "gpt,gpt_qk,ngpt,angpt"
# what each step runs: the papers' sizes on a GPU, the smallest that exercises every line on a CPU
BENCH = {
    "cuda": ["--n_layer", "12", "--n_head", "12", "--n_embd", "768", "--block_size", "1024", "--batch_size", "16",
             "--vocab_size", "50304", "--dtype", "bfloat16", "--compile", "--compiled_only", "--rounds", "10",
             "--steps", "3", "--warmup", "3"],
    "cpu": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "2",
            "--dtype", "float32", "--rounds", "2", "--steps", "1", "--warmup", "1"],
}
COMPARE = {
    "cuda": ["--preset", "gpu", "--iters", "500", "--eval_iters", "50", "--compile", "false"],
    "cpu": ["--preset", "cpu", "--iters", "20", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
            "--block_size", "32", "--batch_size", "4", "--eval_iters", "2"],
}


def run_cuda_tests():
    """tests/test_cuda.py in a fresh interpreter; (passed, pytest's summary line)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "tests/test_cuda.py"], cwd=REPO, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    print(result.stdout[-3000:], end="")
    return result.returncode == 0, lines[-1].strip("= ") if lines else result.stderr.strip()[-300:]


def run_bench(argv):
    """experiments/bench.py in a fresh interpreter: (its results, its table as markdown lines)."""
    result = subprocess.run([sys.executable, "-m", "experiments.bench", *argv], cwd=REPO, capture_output=True,
                            text=True, check=True)
    print(result.stdout, end="")
    return [line for line in result.stdout.splitlines() if line.startswith("|")]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = train.Parser(prog="experiments.verify", description=__doc__.split("\n\n")[0].strip(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available, else cpu (tiny sizes)")
    p.add_argument("--out_dir", default="verify_out", help="default: verify_out")
    p.add_argument("--data_dir", default="data", help="where tiny Shakespeare is prepared (default: data)")
    p.add_argument("--dataset", default="shakespeare_char", help="default: shakespeare_char")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available here; use --device cpu for the tiny run")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()

    print("== 1/3 the CUDA tests")
    tests_passed, tests_summary = run_cuda_tests()

    print("== 2/3 experiments/bench.py")
    bench_argv = ["--device", args.device, "--models", MODELS, "--control", *BENCH[args.device],
                  "--json", str(out_dir.resolve() / "bench.json")]
    bench_table = run_bench(bench_argv)

    print("== 3/3 compare.py")
    compare_argv = ["--models", MODELS, "--seeds", "1", "--device", args.device, *COMPARE[args.device],
                    "--data_dir", args.data_dir, "--dataset", args.dataset, "--out_dir", str(out_dir)]
    compared = compare.main(compare_argv)

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    table = (out_dir / "results.md").read_text().split("\n## ")[0].split("\n", 2)[2].strip()
    lines = [f"# One-device verification: {device}, torch {torch.__version__}", "",
             f"`python -m experiments.verify {shlex.join(argv)}` took {time.time() - start:.0f} s.", "",
             "## 1. CUDA tests", "", f"`python -m pytest tests/test_cuda.py`: {tests_summary}", "",
             "## 2. Speed per step", "", f"`python -m experiments.bench {shlex.join(bench_argv)}`", "",
             *bench_table, "",
             "## 3. Convergence", "", f"`python compare.py {shlex.join(compare_argv)}`", "",
             "![validation loss of the four models](convergence.png)", "", table, ""]
    (out_dir / "verify.md").write_text("\n".join(lines))
    print(f"wrote {out_dir / 'verify.md'}; the CUDA tests: {tests_summary}")
    if not tests_passed:
        sys.exit(1)
    return dict(tests=tests_summary, bench=json.loads((out_dir / "bench.json").read_text()), compare=compared)


if __name__ == "__main__":
    train.run_main(main, "experiments.verify")
