"""experiments/init_depth.py: anGPT's Table L.1 rows at initialization, at several depths."""

import json
import math

import pytest

from experiments import init_depth


def test_at_init_the_factors_hold_the_hidden_norm_near_1_and_a_doubled_factor_compounds_with_depth(char_dataset,
                                                                                                    tmp_path):
    data_dir, name = char_dataset
    rows = init_depth.main(["--depths", "1,3", "--n_embd", "64", "--head_size", "16", "--sequences", "2",
                            "--block_size", "32", "--data_dir", data_dir, "--dataset", name, "--out_dir", str(tmp_path)])
    by_name = {row["name"]: row["depths"] for row in rows}
    assert list(by_name) == list(init_depth.ROWS)
    assert all(math.isfinite(v) for depths in by_name.values() for m in depths.values() for v in m.values())
    for depth in ("1", "3"):
        assert 0.8 < by_name["angpt"][depth]["hidden_norm"] < 1.25
        assert 0.8 < by_name["angpt_no_lerp_nu"][depth]["hidden_norm"] < 1.25
    # x2 on every factor doubles h at each of the 2 x n_layer residual steps: 4 more steps, about 16 times the norm
    assert by_name["angpt_all_x2"]["3"]["hidden_norm"] > 8 * by_name["angpt_all_x2"]["1"]["hidden_norm"]
    # (h + h_block)/sqrt(2) halves the embedding's path every layer
    assert by_name["angpt_no_lerp_nu"]["3"]["embedding_share"] < by_name["angpt_no_lerp_nu"]["1"]["embedding_share"] / 3
    table = (tmp_path / "results.md").read_text()
    assert "| all norm factors x2.0 | " in table and "3 layers: ||h||, loss, embedding's share" in table
    assert json.loads((tmp_path / "results.json").read_text())["depths"] == [1, 3]


def test_bad_depths_get_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        init_depth.main(["--depths", "4,x", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--depths 4,x: expected numbers of layers" in err and len(err.splitlines()) == 1
