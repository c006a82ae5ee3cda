"""experiments/bench.py: the models' step times, side by side."""

import json

import pytest

from conftest import REPO  # noqa: F401  (puts the repo on sys.path)
import compare
from experiments import bench


def test_bench_times_every_model_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    results = bench.main(["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
                          "--batch_size", "2", "--rounds", "2", "--steps", "1", "--warmup", "1", "--device", "cpu",
                          "--control", "--json", str(out)])
    saved = json.loads(out.read_text())
    expected = [*compare.ARCHITECTURES, "gpt_control"]
    assert list(saved) == expected and saved == json.loads(json.dumps(results))
    assert saved["gpt"]["ratios"]["gpt"] == dict(median=1.0, quartiles=[1.0, 1.0])
    assert saved["gpt_qk"]["ratios"]["gpt_qk"] == dict(median=1.0, quartiles=[1.0, 1.0])
    for r in saved.values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] == pytest.approx(32 / (r["ms_per_step"] / 1000))
        assert 0 < r["mfu"] < 1
        assert set(r["ratios"]) == {"gpt", "gpt_qk"}
        for ratio in r["ratios"].values():
            low, high = ratio["quartiles"]
            assert low <= ratio["median"] <= high


def test_bench_rotates_the_order_and_pairs_each_round_with_gpts(monkeypatch):
    # a fake clock: a step of GPT takes 1 unit, of nGPT 1.1, of anGPT 1.2, times a machine speed that gets worse
    # by a factor 1 + round every round (a drift); the models' steps are not run at all
    cost = {"gpt": 1.0, "ngpt": 1.1, "angpt": 1.2}
    clock = {"now": 0.0}
    calls = []

    def fake_make_step(model, module, x, y, autocast):
        def step(forward):
            calls.append(module.__name__)
            clock["now"] += cost[module.__name__] * (1 + (len(calls) - 1) // len(cost))
        return step

    monkeypatch.setattr(bench, "make_step", fake_make_step)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    results = bench.main(["--models", "gpt,ngpt,angpt", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                          "--block_size", "16", "--batch_size", "2", "--rounds", "3", "--steps", "1",
                          "--warmup", "0", "--device", "cpu", "--peak_flops", "1e12"])
    # each round starts one model later: every model runs once first, once second and once last
    assert calls == ["gpt", "ngpt", "angpt", "ngpt", "angpt", "gpt", "angpt", "gpt", "ngpt"]
    # the ratios are taken round by round: each round's is exact despite the drift, so the middle half is one value
    assert results["ngpt"]["ratios"]["gpt"]["median"] == pytest.approx(1.1)
    assert results["angpt"]["ratios"]["gpt"]["median"] == pytest.approx(1.2)
    assert results["angpt"]["ratios"]["gpt"]["quartiles"] == pytest.approx([1.2, 1.2])
    assert set(results["angpt"]["ratios"]) == {"gpt"}  # no gpt_qk was timed
    assert results["gpt"]["ms_per_step"] == pytest.approx(2000.0)  # the median round's GPT step: 2 units, in ms
