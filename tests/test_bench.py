"""A tiny run of benchmarks/bench.py (not in the default run: `pytest -m bench`)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.bench
def test_bench_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--quick", "--no-cli", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {t["model"] for t in saved["throughput"]} == {"tiny_cnn", "resnet10t"}
    for t in res["throughput"]:
        assert t["runner_img_s"] > 0 and t["hand_img_s"] > 0 and t["ratio"] > 0
    assert 0 <= res["imagefolder"][0]["data_share"] <= 1
    assert 0 < res["flops"]["models"][0]["fraction_of_peak"]
    assert set(res["options"]["results"]) == {"fp32", "channels_last", "bf16"}
    assert res["startup_s"] < 30
    md = (tmp_path / "results.md").read_text()
    assert "| ratio |" in md and "runner --help" in md
