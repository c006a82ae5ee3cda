"""bench.py and the FLOP count behind MFU."""

import json

import pytest

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import bench
import gpt
import train


def test_flops_per_token_counts_every_matrix_multiply_and_the_attention():
    config = gpt.Config(block_size=64, vocab_size=65, n_layer=2, n_head=2, n_embd=32)
    model = gpt.Model(config)
    C, L, V, T = 32, 2, 65, 64
    per_layer = 3 * C * C + C * C + 8 * C * C + 4 * C * C  # c_attn, attn c_proj, c_fc, mlp c_proj
    matmul_weights = L * per_layer + V * C  # plus lm_head; the embedding lookup is not a multiply
    assert train.flops_per_token(model, T) == 6 * matmul_weights + 12 * L * C * T


def test_bench_times_every_model_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    results = bench.main(["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
                          "--batch_size", "2", "--rounds", "2", "--steps", "1", "--warmup", "1", "--device", "cpu",
                          "--json", str(out)])
    saved = json.loads(out.read_text())
    expected = [k for k, (f, _) in bench.VARIANTS.items() if f in train.MODELS]
    assert list(saved) == expected and saved == json.loads(json.dumps(results))
    assert saved["gpt"]["ratio_to_gpt"] == 1.0
    for r in saved.values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] == pytest.approx(32 / (r["ms_per_step"] / 1000))
        assert 0 < r["mfu"] < 1
