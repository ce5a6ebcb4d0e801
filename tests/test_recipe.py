"""stage=recipe: which model it ends on, regressions between stages, a failed stage's reason,
the up-front check of its stages, continue_on_fail, stages it never ran."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import FAST, assert_contract

from runner.jobs import error_line as _error_line
from runner.stages.recipe import final_model, regressions
from runner.stages.recipe import stage_headline as headline


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
    rows = [
        _row("baseline", _stage_dir(tmp_path, "1-baseline", "baseline", 0.90), 0.90),
        _row("overfit", _stage_dir(tmp_path, "2-overfit", "overfit", 0.97), 0.97),
        _row("regularize", _stage_dir(tmp_path, "3-regularize", "regularize", 0.99), 0.99),
        _row("tune", _stage_dir(tmp_path, "4-tune", "tune", 0.95), 0.95),
    ]
    final = final_model(rows)
    # the last stage (tune) is worse: the recipe ends on the ladder's outcome, not tune's
    assert final["stage"] == "regularize" and final["val_acc"] == 0.99
    assert final["run"].endswith("3-regularize")
    worse = regressions(rows, n_val=360)
    assert len(worse) == 1 and worse[0].startswith(
        "tune ended at val acc 0.9500, below regularize's"
    )
    # within noise (one standard error on 360 images at p=0.99 is ~0.0074): no regression
    rows[3]["val_acc"] = 0.985
    assert regressions(rows, n_val=360) == []
    # a tie goes to the later stage; a failed stage never counts, however good
    rows[3]["val_acc"] = 0.99
    assert final_model(rows)["stage"] == "tune"
    rows[3].update(val_acc=1.0, exit_code=1)
    assert final_model(rows)["stage"] == "regularize" and regressions(rows, 360) == []


def test_error_line_names_the_reason_not_hydras_footer():
    tail = [
        "stage squeeze -> /x",
        "config error: stage=squeeze needs stage.params.from=<dir>",
        "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ]
    assert _error_line(tail) == "config error: stage=squeeze needs stage.params.from=<dir>"
    assert _error_line(["a", "Killed"]) == "Killed"
    assert _error_line([]) is None
    # no line names an error: the last line that is not Hydra's footer
    tail = [
        "stage train -> /x",
        "Killed by signal 9",
        "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ]
    assert _error_line(tail) == "Killed by signal 9"
    assert (
        _error_line(["Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."])
        is None
    )


def test_change_column_lists_the_stage_yaml_and_per_stage_command_changes(tmp_path):
    (tmp_path / "lineage.json").write_text(
        json.dumps(
            {
                "from_stage": {"model.name": "resnet18", "checks.strict": False},
                "from_command": {
                    "optim.lr": 0.001,
                    "checks.overfit_train_fit.train_loss_target": 0.05,
                    "inspect.max_images": 10,
                },
            }
        )
    )
    (tmp_path / "summary.json").write_text(
        json.dumps({"stage": "overfit", "model": "resnet18", "epochs": 3, "best_val_acc": 0.9})
    )
    head = headline("overfit", tmp_path)  # the stage's own module says it (protocol headline)
    assert (
        head["change"]
        == "model.name=resnet18 optim.lr=0.001 checks.overfit_train_fit.train_loss_target=0.05"
    )
    assert head["val_acc"] == 0.9
    # no from= (no lineage.json): the stage's per_stage overrides as given, not hydra's
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "summary.json").write_text(
        json.dumps({"stage": "baseline", "model": "tiny_cnn", "epochs": 2})
    )
    head = headline("baseline", tmp_path / "none", ["optim.lr=1e-3", "hydra.job.name=x"])
    assert head["change"] == "tiny_cnn, 2 epochs optim.lr=1e-3"


def test_recipe_checks_every_stage_before_running_any(cli):
    """A misspelt stage and a bad per_stage override: one config error naming both (exit 2)
    before anything runs: no stage folder, no training, no traceback."""
    r = cli(
        FAST
        + [
            "stage=recipe",
            "stage.params.stages=[baseline,overfitt,overfit]",
            'stage.params.per_stage.overfit=["trainer.epoch=1"]',
        ]
    )
    assert r.code == 2, r.out
    assert "stage.params.stages[1]='overfitt' is not a stage; did you mean 'overfit'?" in r.out
    assert (
        "stage.params.per_stage.overfit: trainer.epoch=1: trainer has no key 'epoch'; "
        "did you mean 'trainer.epochs'?"
    ) in r.out
    assert "Traceback" not in r.out and "HYDRA_FULL_ERROR" not in r.out
    assert "recipe: 1/" not in r.out and not list(r.cwd.glob("outputs/*/*"))


# isolate=true (a process per stage) in one case, the one that stops after its first stage
# (one child process): the reason reaches the recipe either way
@pytest.mark.parametrize("go_on, isolate", [(True, False), (False, True)])
def test_recipe_failed_stage_reason_and_final_val_acc(cli, go_on, isolate):
    """A stage that fails with an error (no check): the recipe names the error (console,
    summary, report) and its val_acc is the final model's, not the failed stage's. With
    continue_on_fail the recipe goes on and still fails (exit 1); without, it stops and lists
    the stages it never ran."""
    r = cli(
        FAST
        + [
            "stage=recipe",
            "stage.params.stages=[squeeze,train]",
            f"stage.params.continue_on_fail={str(go_on).lower()}",
            f"stage.params.isolate={str(isolate).lower()}",
            'stage.params.per_stage.squeeze=["stage.params.from=nowhere"]',
            'stage.params.per_stage.train=["optim.lr=2e-3"]',
        ]
    )
    assert r.code == 1, r.out
    top = min(r.run_dirs, key=lambda d: len(d.parts))
    s = r.json("summary.json", top)
    squeeze = s["stages"][0]
    assert squeeze["exit_code"] == 2 and squeeze["error"].endswith(
        "stage.params.from=nowhere is not a directory"
    )
    with open(top / "recipe.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["change"] == "(did not run)" and rows[0]["report"] == ""
    html = (top / "report.html").read_text()
    assert "nowhere is not a directory" in html and "(no report)" in html
    checks = {c["name"]: c for c in r.json("checks.json", top)}
    assert checks["recipe.gates"]["status"] == "fail" and s["checks_failed"] == ["recipe.gates"]
    if not go_on:
        assert "nowhere is not a directory" in s["stopped"] and s["not_run"] == ["train"]
        assert [x["stage"] for x in s["stages"]] == ["squeeze"] and not (top / "2-train").exists()
        assert (
            rows[1]["stage"] == "train"
            and rows[1]["change"] == "not run"
            and rows[1]["exit_code"] == ""
        )
        assert s["val_acc"] is None and s["final"] is None
        return
    train = s["stages"][1]
    assert s["stopped"] is None and s["not_run"] == [] and train["error"] is None
    assert "went on" in checks["recipe.gates"]["message"]
    assert s["val_acc"] == train["val_acc"] == s["final"]["val_acc"] is not None
    assert s["final"]["stage"] == "train" and checks["recipe.progress"]["status"] == "pass"
    assert "optim.lr=2e-3" in rows[1]["change"] and rows[1]["report"] == "2-train/report.html"
    assert "None epochs" not in r.out and "recipe: val_acc" in r.out
    assert_contract(top, top / "2-train")


@pytest.mark.parametrize("n_val", [None, 0])
def test_regressions_without_a_val_count_use_min_delta(tmp_path, n_val):
    rows = [
        _row("overfit", tmp_path, 0.9),
        _row("tune", tmp_path, 0.897),
        _row("squeeze", tmp_path, 0.8),
    ]
    worse = regressions(rows, n_val, min_delta=0.005)
    assert [w.split()[0] for w in worse] == ["squeeze"]


def test_a_recipes_from_is_where_its_chain_starts_not_every_stages():
    """`stage=recipe from=X`: the recipe decides where each stage starts (X for the first
    training stage after baseline, or squeeze's candidates when nothing trained before it);
    X is never passed to every stage, where it would clash with squeeze's own sources."""
    from runner.stages.recipe import passthrough, recipe_from

    cmd = [
        "+from=runs/x",
        "optim.lr=1e-3",
        "stage=recipe",
        "stage.params.stages=[squeeze]",
        "hydra.run.dir=out",
    ]
    assert passthrough(cmd) == ["optim.lr=1e-3"]
    assert recipe_from(cmd) == "runs/x" and recipe_from(["optim.lr=1"]) is None
