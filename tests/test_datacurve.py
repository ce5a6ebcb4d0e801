"""stage=datacurve and datacurve.more_data: nested subsets, the power-law fit, its prediction
and interval, the verdict either way, and the stage's run directory."""

from __future__ import annotations

import csv

import numpy as np
from conftest import FAST, assert_contract

from runner.checks.datacurve import fit, more_data_verdict, predict
from runner.data import nested_subset


def test_subsets_are_nested_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 20, 8])
    small, big = nested_subset(labels, 0.25, 0), nested_subset(labels, 0.5, 0)
    assert set(small) <= set(big)
    assert np.bincount(labels[small]).tolist() == [25, 12, 5, 2]  # round(f * n) per class
    assert np.bincount(labels[nested_subset(labels, 0.01, 0)]).tolist() == [1, 1, 1, 1]
    assert not np.array_equal(nested_subset(labels, 0.25, 1), small)  # seeded


def _points(n, err, seeds=2, noise=0.004, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"n_train": int(k), "val_error": float(e + rng.normal(0, noise)), "val_acc": float(1 - e)}
        for k, e in zip(n, err)
        for _ in range(seeds)
    ]


def test_a_steep_curve_says_more_data_helps_and_a_flat_one_says_look_elsewhere():
    n = np.array([100, 250, 500, 1000])
    steep = 2.0 * n**-0.5 + 0.02  # 0.22 -> 0.083: far from its floor
    rows = _points(n, steep)
    nn = np.array([r["n_train"] for r in rows], float)
    ee = np.array([r["val_error"] for r in rows])
    p = fit(nn, ee)
    assert p is not None and 0.3 < p[1] < 0.8  # the exponent is recovered
    pred = predict(nn, ee, 1000.0, 200)
    true_gain = (2.0 * 1000**-0.5) - (2.0 * 2000**-0.5)
    assert abs(pred["gain_2x"] - true_gain) < 0.01
    lo, hi = pred["gain_2x_interval"]
    assert lo <= pred["gain_2x"] <= hi
    v = more_data_verdict(rows, pred, 0.5)
    assert v.status == "pass" and v.message.startswith("more data would help: about +")
    flat = np.full(4, 0.1)  # at its floor already
    rows = _points(n, flat)
    nn = np.array([r["n_train"] for r in rows], float)
    pred = predict(nn, np.array([r["val_error"] for r in rows]), 1000.0, 200)
    v = more_data_verdict(rows, pred, 0.5)
    assert v.status == "warn" and "the curve is flat" in v.message and "labels" in v.message
    two = _points(np.array([100, 1000]), np.array([0.2, 0.1]))
    assert more_data_verdict(two, {}, 0.5).status == "skip"


def test_the_stage_trains_each_point_and_writes_the_curve(cli, tmp_path):
    import json

    import runner

    # the Python entry, as a notebook calls it
    args = [*FAST, "stage.params.fractions=[0.25,0.5,1.0]", "stage.params.seeds=1"]
    args += ["stage.params.bootstrap=50", "trainer.epochs=1", "stage.params.budget=steps"]
    d = tmp_path / "dc"
    run = runner.run("datacurve", args, run_dir=d, cwd=tmp_path, quiet=True)
    assert run.path == d and run.stage == "datacurve"
    s = json.loads((d / "summary.json").read_text())
    dc = s["datacurve"]
    assert dc["fractions"] == [0.25, 0.5, 1.0] and dc["budget"] == "steps"
    rows = list(csv.DictReader((d / "datacurve.csv").open()))
    assert [int(x["n_train"]) for x in rows] == [64, 128, 256]  # synthetic: 256 train
    # the same optimiser steps: 1 epoch of all the data = 4 epochs of a quarter
    assert [int(x["epochs"]) for x in rows] == [4, 2, 1]
    assert dc["full_run"] == str(d / "points" / "1-seed0") and s["data"]["num_train"] == 256
    checks = {c["name"]: c for c in json.loads((d / "checks.json").read_text())}
    assert checks["datacurve.more_data"]["status"] in ("pass", "warn")
    assert (d / "plots" / "datacurve_more_data_datacurve.png").stat().st_size > 1000
    assert_contract(d)
    bad = cli(["stage=datacurve", *FAST, "stage.params.fractions=[1.0]"])
    assert bad.code == 2 and "at least 2 different fractions" in bad.out


def test_planted_curves_digits_gain_from_data_synthetic_squares_are_saturated(cli, tmp_path):
    """A tiny CNN on a few percent of digits gains from each doubling (more data helps); the
    synthetic squares are learnt whole from a quarter of their images (the curve is flat)."""
    keep = ("trainer.progress", "data.num_workers", "trainer.threads")
    fast = [x for x in FAST if x.startswith(keep)]
    base = ["stage=datacurve", *fast, "model=tiny_cnn", "stage.params.seeds=1"]
    r = cli(
        [
            *base,
            "data=digits",
            "stage.params.fractions=[0.03,0.06,0.12,0.25]",
            "trainer.epochs=20",
            "hydra.run.dir=digits",
        ]
    )
    assert r.code == 0, r.out
    v = {c["name"]: c for c in r.json("checks.json", tmp_path / "digits")}["datacurve.more_data"]
    assert v["status"] == "pass" and v["message"].startswith("more data would help"), v
    s = cli(
        [
            *base,
            "data=synthetic",
            "stage.params.fractions=[0.25,0.5,1.0]",
            "trainer.epochs=8",
            "hydra.run.dir=squares",
        ]
    )
    assert s.code in (0, 1), s.out
    v = {c["name"]: c for c in s.json("checks.json", tmp_path / "squares")}["datacurve.more_data"]
    assert v["status"] == "warn" and "the curve is flat" in v["message"], v
