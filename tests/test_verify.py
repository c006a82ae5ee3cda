"""experiments/verify.py, the one-GPU check, at the tiny size a CPU runs it: every step runs and its results reach verify.md."""

import json

import torch

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
from experiments import verify


def test_verify_runs_the_cuda_tests_bench_and_compare_and_writes_them_up(char_dataset, tmp_path):
    data_dir, name = char_dataset
    results = verify.main(["--device", "cpu", "--out_dir", str(tmp_path), "--data_dir", data_dir, "--dataset", name])
    report = (tmp_path / "verify.md").read_text()

    # 1. the CUDA tests ran, and without a GPU they say that they were skipped
    if not torch.cuda.is_available():
        assert "skipped" in results["tests"] and "passed" not in results["tests"]
    assert f"`python -m pytest tests/test_cuda.py`: {results['tests']}" in report
    # 2. bench: every model and the control, each row as bench.json has it
    timed = json.loads((tmp_path / "bench.json").read_text())
    assert list(timed) == ["gpt", "gpt_qk", "ngpt", "angpt", "gpt_control"]
    for model, r in timed.items():
        assert f"| {model} | {r['ms_per_step']:.2f} | {r['ratios']['gpt']['median']:.3f}x " in report
    # 3. compare: the four models' runs, the plot, and the table of results.md
    compared = json.loads((tmp_path / "results.json").read_text())
    assert list(compared["models"]) == ["gpt", "gpt_qk", "ngpt", "angpt"]
    assert (tmp_path / "convergence.png").read_bytes().startswith(b"\x89PNG")
    for m in compared["models"].values():
        assert f"| {m['label']} | " in report and f"{m['final_val_loss_mean']:.4f}" in report
