"""Every `-m` sweep ends with one table (runner/aggregate.py); `aggregate` rebuilds it.

Two real sweeps run once for the module (about 30 s on 2 cores):
- A, basic launcher: optim.lr x optim.weight_decay x seed, where lr=-1 fails validation;
- B, joblib launcher with 2 workers: data=synthetic,custom x seed, where the custom
  dataset factory raises (a crash inside the job, not a config error).
The tests read what users read: runs.csv, groups.csv, report.html, the exit code.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

TINY = [
    "stage=train",
    "data=synthetic",
    "data.num_train=128",
    "data.num_val=64",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.progress=false",
    "data.num_workers=0",
    "trainer.threads=1",
]
LRS, WDS, SEEDS = ("0.001", "0.003", "-1"), ("0.0", "0.0001"), ("1", "2")

BOOM = """
def make(**kwargs):
    raise RuntimeError("boom: the data server is on fire")
"""


def read_csv(p: Path):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def overrides_of(job: Path) -> dict:
    pairs = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in pairs)


def sweep_dir(cwd: Path, before=()) -> Path:
    dirs = [
        p for p in sorted(cwd.glob("multirun/*/*")) if p.name != "aggregate" and p not in before
    ]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweeps")
    (cwd / "boom.py").write_text(BOOM)
    a = run_cli(
        [
            "-m",
            *TINY,
            f"optim.lr={','.join(LRS)}",
            f"optim.weight_decay={','.join(WDS)}",
            f"seed={','.join(SEEDS)}",
        ],
        cwd,
    )
    dir_a = sweep_dir(cwd)
    b = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *TINY,
            "data=synthetic,custom",
            "data._target_=boom.make",
            "seed=1,2",
        ],
        cwd,
    )
    dir_b = sweep_dir(cwd, before=[dir_a])
    return {"cwd": cwd, "a": a, "b": b, "dir_a": dir_a, "dir_b": dir_b}


def test_grid_sweep_writes_one_row_per_job_with_overrides_as_columns(sweeps):
    rows = read_csv(sweeps["dir_a"] / "runs.csv")
    assert len(rows) == len(LRS) * len(WDS) * len(SEEDS)
    for col in (
        "sweep",
        "job",
        "stage",
        "optim.lr",
        "optim.weight_decay",
        "seed",
        "status",
        "exit_code",
        "error",
        "val_acc",
        "val_loss",
        "train_loss",
        "epochs",
        "params",
        "wall_s",
        "checks_pass",
        "checks_warn",
        "checks_fail",
        "checks_skip",
        "resumed",
        "run_dir",
    ):
        assert col in rows[0], col
    grid = {(float(r["optim.lr"]), float(r["optim.weight_decay"]), r["seed"]) for r in rows}
    assert grid == {(float(lr), float(wd), s) for lr in LRS for wd in WDS for s in SEEDS}
    for r in rows:
        job = sweeps["dir_a"] / r["run_dir"]
        ov = overrides_of(job)
        assert float(r["optim.lr"]) == float(ov["optim.lr"]) and r["seed"] == ov["seed"]
        if float(r["optim.lr"]) > 0:
            s = json.loads((job / "summary.json").read_text())
            assert r["status"] == "finished" and r["exit_code"] == "0" and r["error"] == ""
            assert float(r["val_acc"]) == pytest.approx(s["val_acc"])
            assert float(r["val_loss"]) == pytest.approx(s["val_loss"])
            assert int(r["checks_pass"]) == s["checks"]["pass"] >= 1
        else:  # the deliberately bad value: listed, with the validation message as its error
            assert r["status"] == "failed" and r["exit_code"] == "2"
            assert "optim.lr=-1.0 must be > 0" in r["error"] and r["val_acc"] == ""


def test_a_failing_job_hides_nothing_and_the_sweep_exit_code_says_so(sweeps):
    a = sweeps["a"]
    assert a.code == 2, a.out[-3000:]  # config error in some jobs -> 2, after all jobs ran
    finished = list(sweeps["dir_a"].glob("*/summary.json"))
    assert len(finished) == 8
    failed = sorted(sweeps["dir_a"].glob("*/error.json"))
    assert len(failed) == 4
    assert json.loads(failed[0].read_text())["error"] == "config error: optim.lr=-1.0 must be > 0"
    # the console ends with the ranked table and the failures
    tail = a.out[a.out.index("sweep summary") :]
    assert "rank" in tail and "best" in tail and tail.count("FAILED:") == 4
    # the sweep's own record of its outcome, which the CLI's exit code is read from
    sweep = json.loads((sweeps["dir_a"] / "sweep.json").read_text())
    assert sweep["exit_code"] == 2 and sweep["jobs"] == {"finished": 8, "failed": 4}


def test_seed_groups_mean_std_count_equal_the_per_run_summaries(sweeps):
    groups = read_csv(sweeps["dir_a"] / "groups.csv")
    assert len(groups) == len(LRS) * len(WDS)
    ranked = [g for g in groups if g["rank"]]
    assert len(ranked) == 4 and [int(g["rank"]) for g in ranked] == [1, 2, 3, 4]
    # expected numbers straight from each job's overrides and summary.json
    by_cfg = {}
    for job in sweeps["dir_a"].iterdir():
        if (job / ".hydra").is_dir():
            ov = overrides_of(job)
            key = (float(ov["optim.lr"]), float(ov["optim.weight_decay"]))
            done = (job / "summary.json").exists()
            s = json.loads((job / "summary.json").read_text()) if done else None
            by_cfg.setdefault(key, []).append(s)
    for g in groups:
        runs = by_cfg[(float(g["optim.lr"]), float(g["optim.weight_decay"]))]
        assert int(g["jobs"]) == 2 and sorted(g["seeds"].split()) == ["1", "2"]
        if float(g["optim.lr"]) < 0:
            assert g["n"] == "0" and g["failed"] == "2" and g["vs_best"] == "no result"
            continue
        assert g["n"] == "2" and g["failed"] == "0"
        for fig in ("val_acc", "val_loss", "train_loss"):
            vals = [s[fig] for s in runs]
            assert float(g[f"{fig}_mean"]) == pytest.approx(statistics.fmean(vals), abs=1e-9)
            assert float(g[f"{fig}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-9)
    # ranked by mean val_acc, best first; each compared with the best by Welch's t-test
    from scipy.stats import ttest_ind

    means = [float(g["val_acc_mean"]) for g in ranked]
    assert means == sorted(means, reverse=True)
    best = ranked[0]
    assert best["vs_best"] == "best" and best["p_value"] == ""

    def accs(g):
        key = (float(g["optim.lr"]), float(g["optim.weight_decay"]))
        return [s["val_acc"] for s in by_cfg[key]]

    for g in ranked[1:]:
        p = ttest_ind(accs(g), accs(best), equal_var=False).pvalue
        assert g["test"] == "Welch's t-test over 2 vs 2 seeds (two-sided)"
        if math.isfinite(p):  # no spread on either side: only the gap tells (noise.across_seeds)
            assert float(g["p_value"]) == pytest.approx(p)
        assert g["vs_best"] == ("significant" if float(g["p_value"]) <= 0.05 else "not significant")


def test_sweep_report_has_sortable_tables_failures_and_the_metric_plot(sweeps):
    d = sweeps["dir_a"]
    html = (d / "report.html").read_text()
    assert 'class="sortable"' in html and "<script>" in html
    assert "http" not in html.split("<script>")[1]  # self-contained: no CDN
    assert "Failed jobs" in html and "optim.lr=-1.0 must be &gt; 0" in html
    assert 'src="plots/val_acc_by_key.png"' in html
    assert (d / "plots" / "val_acc_by_key.png").stat().st_size > 5000
    assert 'href="0/report.html"' in html  # each job links to its own report


def test_joblib_sweep_lists_a_crashed_job_and_exits_non_zero(sweeps):
    b = sweeps["b"]
    assert b.code == 1, b.out[-3000:]  # the jobs ran in worker processes; the code still says so
    rows = read_csv(sweeps["dir_b"] / "runs.csv")
    assert sorted((r["data"], r["seed"], r["status"]) for r in rows) == [
        ("custom", "1", "failed"),
        ("custom", "2", "failed"),
        ("synthetic", "1", "finished"),
        ("synthetic", "2", "finished"),
    ]
    for r in rows:
        if r["status"] == "failed":
            assert r["error"] == "RuntimeError: boom: the data server is on fire"
            err = json.loads((sweeps["dir_b"] / r["run_dir"] / "error.json").read_text())
            assert "boom.py" in err["traceback"]  # the full traceback is kept beside the line
        else:
            assert 0.0 <= float(r["val_acc"]) <= 1.0


def test_aggregate_two_sweeps_gives_one_combined_table(sweeps):
    cwd, out = sweeps["cwd"], sweeps["cwd"] / "combined"
    res = run_cli(["aggregate", str(sweeps["dir_a"]), str(sweeps["dir_b"]), "--out", str(out)], cwd)
    assert res.code == 1, res.out  # some jobs failed
    rows = read_csv(out / "runs.csv")
    assert len(rows) == 12 + 4
    assert len({r["sweep"] for r in rows}) == 2
    # keys varied in one sweep only are filled from the other sweep's composed configs
    b_rows = [r for r in rows if r["sweep"].endswith(sweeps["dir_b"].name)]
    a_rows = [r for r in rows if r["sweep"].endswith(sweeps["dir_a"].name)]
    for r in b_rows:
        cfg = yaml.safe_load((out / r["run_dir"] / ".hydra" / "config.yaml").read_text())
        assert float(r["optim.lr"]) == cfg["optim"]["lr"] and r["data._target_"] == "boom.make"
    assert {r["data"] for r in a_rows} == {"synthetic"}
    assert {r["data._target_"] for r in a_rows} == {""}  # null in sweep A's configs
    groups = read_csv(out / "groups.csv")
    assert len(groups) == 6 + 2 and sum(int(g["jobs"]) for g in groups) == 16
    assert (out / "report.html").exists() and "Sweep: 16 jobs" in (out / "report.html").read_text()


def test_aggregate_rebuilds_the_same_table_in_place(sweeps):
    d = sweeps["dir_a"]
    before = (d / "runs.csv").read_text(), (d / "groups.csv").read_text()
    res = run_cli(["aggregate", str(d)], sweeps["cwd"])
    assert res.code == 1 and "12 jobs, 6 seed groups" in res.out
    assert ((d / "runs.csv").read_text(), (d / "groups.csv").read_text()) == before


def test_aggregate_sees_resumed_and_unfinished_jobs(sweeps, tmp_path):
    d = tmp_path / "sweep"
    shutil.copytree(sweeps["dir_a"], d)
    rows = {r["job"]: r for r in read_csv(d / "runs.csv")}
    ok = [j for j, r in rows.items() if r["status"] == "finished"]
    resumed, killed = d / ok[0], d / ok[1]
    for job in (resumed, killed):  # as if killed after the epoch-1 checkpoint of 2 epochs
        (job / "summary.json").unlink()
    # continue one of them in its own directory, with the sweep's overrides
    ov = overrides_of(resumed)
    args = [f"{k}={v}" for k, v in ov.items() if k != "trainer.epochs"] + ["trainer.epochs=2"]
    res = run_cli([f"resume={resumed}", *args], sweeps["cwd"])
    assert res.code == 0, res.out[-3000:]
    res = run_cli(["aggregate", str(d)], sweeps["cwd"])
    assert res.code == 1 and res.out.count("INCOMPLETE: ") == 1, res.out
    after = {r["job"]: r for r in read_csv(d / "runs.csv")}
    k = after[killed.name]
    assert k["status"] == "incomplete" and k["val_acc"] == "" and "no summary.json" in k["error"]
    r = after[resumed.name]
    assert r["status"] == "finished" and r["resumed"] == "True" and r["epochs"] == "2"
    assert r["trainer.epochs"] == "2"  # what produced the current results
    assert (r["optim.lr"], r["optim.weight_decay"], r["seed"]) == (
        rows[resumed.name]["optim.lr"],
        rows[resumed.name]["optim.weight_decay"],
        rows[resumed.name]["seed"],
    )
    assert "resume" not in r  # how a job was started is not what it is


def test_seed_groups_significance_on_known_numbers(tmp_path):
    from runner.aggregate import seed_groups

    def row(lr, seed, acc, status="finished"):
        return {
            "stage": "train",
            "lr": lr,
            "seed": seed,
            "val_acc": acc,
            "status": status,
            "run_dir": f"{lr}-{seed}",
        }

    rows = [
        row(1, 1, 0.90),
        row(1, 2, 0.92),  # best: mean 0.91, std 0.0141
        row(2, 1, 0.89),
        row(2, 2, 0.91),  # 0.01 below: within seed noise
        row(3, 1, 0.50),
        row(3, 2, 0.52),  # far below
        row(4, 1, 0.95),  # one seed: spread unknown
        row(5, 1, None, "failed"),
    ]
    groups = seed_groups(rows, ["stage", "lr"], ["lr"], "val_acc", "max")
    got = {g["lr"]: g for g in groups}
    assert [g["lr"] for g in groups] == [4, 1, 2, 3, 5]
    assert got[1]["val_acc_mean"] == pytest.approx(0.91)
    assert got[1]["val_acc_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert got[4]["vs_best"] == "best" and got[4]["val_acc_std"] is None
    assert got[1]["vs_best"] == "n/a (1 seed)"  # the best has one seed: no spread to compare
    ranked = seed_groups(rows[:6], ["stage", "lr"], ["lr"], "val_acc", "max")
    marks = {g["lr"]: g["vs_best"] for g in ranked}
    assert marks == {1: "best", 2: "not significant", 3: "significant"}
    p = {g["lr"]: g["p_value"] for g in ranked}  # Welch's t-test, two-sided
    assert p[1] is None and p[2] == pytest.approx(0.5528, abs=1e-4)
    assert p[3] == pytest.approx(0.00125, abs=1e-5)
    assert got[5]["rank"] is None and got[5]["n"] == 0 and got[5]["failed"] == 1
    loss = seed_groups(rows[:6], ["stage", "lr"], ["lr"], "val_acc", "min")
    assert [g["lr"] for g in loss] == [3, 2, 1]


def test_commands_dispatch_matches_the_cli():
    import runner.__main__ as cli_main
    from runner.commands import COMMANDS, run_command

    src = Path(cli_main.__file__).read_text()
    assert "argv[0] in COMMANDS" in src  # the CLI sends every command name here
    assert set(COMMANDS) >= {"aggregate", "init", "predict", "export"}
    assert run_command("nope", []) == 2


def test_aggregate_bad_input_exits_2_with_a_clear_message(tmp_path):
    res = run_cli(["aggregate", str(tmp_path / "missing")], tmp_path)
    assert res.code == 2 and f"{tmp_path / 'missing'} is not a directory" in res.out
    (tmp_path / "empty").mkdir()
    res = run_cli(["aggregate", str(tmp_path / "empty")], tmp_path)
    assert res.code == 2 and "no run directories (with .hydra/)" in res.out


def test_another_tools_report_html_is_never_overwritten(sweeps, tmp_path):
    from runner.aggregate import MARKER, summarize

    d = tmp_path / "tune_sweep"
    shutil.copytree(sweeps["dir_b"], d)
    assert MARKER in (d / "report.html").read_text()  # ours: rebuilt in place
    theirs = "<!doctype html><title>study report</title>"
    (d / "report.html").write_text(theirs)  # e.g. the tune sweeper's study page
    tab = summarize([d], d)
    assert tab.report == d / "runs.html" and (d / "report.html").read_text() == theirs
    assert MARKER in (d / "runs.html").read_text() and len(read_csv(d / "runs.csv")) == 4


def test_callback_ranks_by_the_sweepers_objective_unless_told_otherwise():
    from omegaconf import OmegaConf

    from runner.aggregate import SweepSummary

    tune = OmegaConf.create({"hydra": {"sweeper": {"metric": "val_loss", "direction": "minimize"}}})
    basic = OmegaConf.create({"hydra": {"sweeper": {"max_batch_size": None}}})
    assert SweepSummary().ranking(tune) == ("val_loss", "min")
    assert SweepSummary().ranking(basic) == ("val_acc", "max")
    assert SweepSummary(metric="train_loss").ranking(basic) == ("train_loss", "min")
    assert SweepSummary(metric="best_val_acc", mode="max").ranking(tune) == ("best_val_acc", "max")


def test_a_sweep_without_the_metric_still_gets_its_table(sweeps, tmp_path):
    from runner.aggregate import summarize
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="metric='objective' is in no summary.json"):
        summarize([sweeps["dir_b"]], tmp_path / "strict", "objective")  # the CLI: exit 2
    # the sweep callback (e.g. stage=inspect has no val_acc): unranked, nothing hidden
    tab = summarize([sweeps["dir_b"]], tmp_path / "cb", "objective", require_metric=False)
    assert len(read_csv(tmp_path / "cb" / "runs.csv")) == 4
    assert {g["vs_best"] for g in tab.groups} == {"no objective", "no result"}
    assert all(g["rank"] is None for g in tab.groups)
