"""stage=recipe: which model it ends on, regressions between stages, a failed stage's reason."""
from __future__ import annotations

import json

import pytest
from conftest import FAST, assert_contract

from runner.stages.recipe import _error_line, final_model, regressions


def _stage_dir(root, name, stage, acc):
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text(f"stage:\n  name: {stage}\noptim:\n  lr: 0.001\n")
    (d / "checkpoints" / "best.pt").write_bytes(b"")
    (d / "summary.json").write_text(json.dumps({"stage": stage, "best_val_acc": acc}))
    return d


def _row(stage, d, acc, code=0):
    return {"stage": stage, "dir": str(d), "val_acc": acc, "exit_code": code}


def test_final_model_is_the_best_passing_stage_and_a_regression_is_named(tmp_path):
    rows = [_row("baseline", _stage_dir(tmp_path, "1-baseline", "baseline", 0.90), 0.90),
            _row("overfit", _stage_dir(tmp_path, "2-overfit", "overfit", 0.97), 0.97),
            _row("regularize", _stage_dir(tmp_path, "3-regularize", "regularize", 0.99), 0.99),
            _row("tune", _stage_dir(tmp_path, "4-tune", "tune", 0.95), 0.95)]
    final = final_model(rows)
    # the last stage (tune) is worse: the recipe ends on the ladder's outcome, not tune's
    assert final["stage"] == "regularize" and final["val_acc"] == 0.99
    assert final["run"].endswith("3-regularize")
    worse = regressions(rows, n_val=360)
    assert len(worse) == 1 and worse[0].startswith("tune ended at val acc 0.9500, below regularize's")
    # within noise (one standard error on 360 images at p=0.99 is ~0.0074): no regression
    rows[3]["val_acc"] = 0.985
    assert regressions(rows, n_val=360) == []
    # a tie goes to the later stage; a failed stage never counts, however good
    rows[3]["val_acc"] = 0.99
    assert final_model(rows)["stage"] == "tune"
    rows[3].update(val_acc=1.0, exit_code=1)
    assert final_model(rows)["stage"] == "regularize" and regressions(rows, 360) == []


def test_error_line_names_the_reason_not_hydras_footer():
    tail = ["stage squeeze -> /x", "config error: stage=squeeze needs stage.params.from=<dir>",
            "", "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert _error_line(tail) == "config error: stage=squeeze needs stage.params.from=<dir>"
    assert _error_line(["a", "Killed"]) == "Killed"
    assert _error_line([]) is None


def test_recipe_failed_stage_reason_and_final_val_acc(cli):
    """A stage that fails with an error (no check): the recipe names the error (console,
    summary, report) and its val_acc is the final model's, not the failed stage's."""
    r = cli(FAST + ["stage=recipe", "stage.params.stages=[train,squeeze]"])
    assert r.code == 1, r.out
    top = min(r.run_dirs, key=lambda d: len(d.parts))
    s = r.json("summary.json", top)
    train, squeeze = s["stages"]
    assert squeeze["exit_code"] == 2 and "stage.params.from" in squeeze["error"]
    assert "stage.params.from" in s["stopped"] and train["error"] is None
    assert s["val_acc"] == train["val_acc"] == s["final"]["val_acc"] is not None
    assert s["final"]["stage"] == "train"
    html = (top / "report.html").read_text()
    assert "needs stage.params.from" in html and "(no report)" in html
    checks = {c["name"]: c for c in r.json("checks.json", top)}
    assert checks["recipe.gates"]["status"] == "fail" and checks["recipe.progress"]["status"] == "pass"
    assert "None epochs" not in r.out and "recipe: val_acc" in r.out
    assert_contract(top, top / "1-train")


@pytest.mark.parametrize("n_val", [None, 0])
def test_regressions_without_a_val_count_use_min_delta(tmp_path, n_val):
    rows = [_row("overfit", tmp_path, 0.9), _row("tune", tmp_path, 0.897), _row("squeeze", tmp_path, 0.8)]
    worse = regressions(rows, n_val, min_delta=0.005)
    assert [w.split()[0] for w in worse] == ["squeeze"]
