"""Tiny runs of the benchmarks: bench.py under `pytest -m bench` (not in the default run), the
GPU script's CPU smoke mode in the default run."""

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


def test_gpu_bench_runs_on_cpu_in_quick_mode(tmp_path):
    # the GPU script waits for a CUDA machine; its quick CPU mode keeps it working meanwhile
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH.parent / "bench_gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    res = gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert [r["variant"] for r in res["runs"]] == ["fp32", "bf16+channels_last"]
    for r in res["runs"]:
        # MFU > 0 only: on a CPU shared with the other test worker the matmul peak it divides
        # by is measured low, and MFU came out 1.9-2.3 (a GPU's peak is its own)
        assert r["runner_img_s"] > 0 and r["hand_img_s"] > 0 and r["mfu"] > 0
        assert r["gflop_per_step"] > 0
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert saved["runs"][0]["model"] == "test_resnet"
    assert "| MFU (vs) |" in (tmp_path / "gpu_results.md").read_text()
