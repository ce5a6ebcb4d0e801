"""The job layer (runner/jobs.py) and the Python API on it (runner.run, runner.load)."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import FAST

import runner
from runner import jobs


@pytest.mark.parametrize(
    "override, cls",
    [
        ("model.name=resnet18", "identity"),
        ("model=timm", "identity"),
        ("seed=3", "identity"),
        ("stage=overfit", "stage"),
        ("stage.params.rungs=[]", "stage"),
        ("+from=runs/a", "from"),
        ("from=runs/a", "from"),
        ("init_from=x.pt", "init_from"),
        ("resume=true", "resume"),
        ("tune.trial=3", "trial"),
        ("experiment=my_exp", "experiment"),
        ("hydra.run.dir=out/x", "location"),
        ("hydra.sweep.subdir=1", "location"),
        ("hydra/launcher=joblib", "hydra"),
        ("hydra.sweeper.n_trials=3", "hydra"),
        ("~checks.init_loss", "identity"),
        ("stagey=1", "identity"),  # a prefix is a whole key part, not a string prefix
    ],
)
def test_one_table_classifies_every_override(override, cls):
    assert jobs.classify(override) == cls


def test_the_questions_asked_of_a_command_come_from_the_table():
    cmd = [
        "stage=recipe",
        "from=runs/a",
        "model.name=resnet18",
        "experiment=x",
        "init_from=w.pt",
        "hydra.run.dir=o",
        "hydra/launcher=joblib",
        "tune.trial=1",
    ]
    assert jobs.select(cmd, jobs.HANDED_ON) == [
        "model.name=resnet18",
        "experiment=x",
        "init_from=w.pt",
        "tune.trial=1",
    ]
    assert jobs.select(cmd, jobs.EXPERIMENT_FILE) == ["model.name=resnet18"]
    # resume= reapplies what the command does not set again, never the old location or resume
    recorded = ["model.name=a", "optim.lr=0.1", "hydra.run.dir=old", "resume=true"]
    assert jobs.reapplied_on_resume(recorded, ["optim.lr=0.2"]) == ["model.name=a"]


def test_plan_gathers_every_problem_naming_its_override(tmp_path):
    with pytest.raises(runner.ConfigError) as e:
        jobs.plan("baseline", [*FAST, "model.nme=x", "optim.lr=abc", "trainer.epochs=0"])
    problems = e.value.problems
    assert any(p.startswith("model.nme=x: model has no key 'nme'; did you mean") for p in problems)
    assert any(p.startswith("optim.lr=abc: bad value") for p in problems)
    # composition passed: the semantic checks (config.validate) run on the user's keys too
    with pytest.raises(runner.ConfigError) as e:
        jobs.plan("train", [*FAST, "trainer.epochs=0"], cwd=tmp_path)
    assert any("trainer.epochs=0" in p for p in e.value.problems)
    with pytest.raises(runner.ConfigError) as e:  # a key the selected option does not read
        jobs.plan("train", ["model.name=resnet18"], cwd=tmp_path)
    assert "model.name=resnet18 (set on the command line) is not read by model=custom" in str(
        e.value
    )


def test_plan_and_run_in_process_leave_the_callers_state_alone(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    p = jobs.plan("train", FAST, cwd=tmp_path)
    assert p.stage == "train" and p.cfg.trainer.epochs == 2
    assert p.argv(tmp_path / "r") == ["stage=train", *FAST, f"hydra.run.dir={tmp_path / 'r'}"]
    out = jobs.run(p, tmp_path / "r", capture=True)
    assert out.code == 0, out.output
    assert "train: val_acc" in out.output
    assert root.handlers == handlers and root.level == level
    assert not GlobalHydra.instance().is_initialized()
    rec = jobs.RunRecord.read(tmp_path / "r")
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert rec.status == "finished" and rec.exit_code == 0 == s["exit_code"]
    assert rec.accuracy == pytest.approx(s["best_val_acc"])  # the best val-loss epoch's
    assert [c["name"] for c in rec.checks] == ["train.finite"]


def test_a_run_that_fails_says_why_in_error_json(tmp_path):
    # refused before it began (its folder holds only the job layer's record)
    boom = tmp_path / "boom.py"
    boom.write_text("def make(**kw):\n    raise FileNotFoundError('no such folder: /data/x')\n")
    d = tmp_path / "r"
    p = jobs.plan("train", [*FAST, "data=custom", "data._target_=boom.make"], cwd=tmp_path)
    out = jobs.run(p, d, capture=True)
    out_code = out.code
    assert out_code != 0
    rec = jobs.RunRecord.read(d)
    assert rec.status == "failed" and rec.exit_code == out_code
    assert "no such folder: /data/x" in rec.error


def test_runner_run_and_load_give_the_run_as_objects(tmp_path):
    import torch

    rec = runner.run("train", FAST, run_dir=tmp_path / "r", cwd=tmp_path, quiet=True)
    assert rec.ok and rec.stage == "train" and rec.exit_code == 0
    assert rec.verdict("train.finite")["status"] == "pass"
    assert len(rec.metrics) == 2 and rec.metrics[-1]["epoch"] == 2.0
    assert rec.config.trainer.epochs == 2
    assert rec.weights == tmp_path / "r" / "checkpoints" / "best.pt"
    model = rec.model()
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    page = rec._repr_html_()
    assert "train.finite" in page and "PASS" in page and "data:image/png;base64," in page
    again = runner.load(tmp_path / "r")
    assert again.accuracy == rec.accuracy and again.summary == rec.summary
    with pytest.raises(KeyError, match="is not a check of this run"):
        rec.verdict("init.loss")


def test_runner_run_raises_the_clis_config_error(tmp_path):
    with pytest.raises(runner.ConfigError) as e:
        runner.run("baseline", ["model.nme=1"], cwd=tmp_path)
    assert e.value.problems == ["model.nme=1: model has no key 'nme'; did you mean 'model.name'?"]
    assert not (tmp_path / "outputs").exists()  # nothing ran
    with pytest.raises(runner.ConfigError, match="not a directory"):
        runner.load(tmp_path / "nowhere")


def test_contract_validator_is_the_shared_one():
    """The vendored tests/tools/check_rundir.py is the shared one (DESIGN.md's contract), where
    a checkout has ../shared beside it; without it the vendored copy still checks every run."""
    from conftest import CHECK_RUNDIR, SHARED_CHECK_RUNDIR

    assert CHECK_RUNDIR.is_file()
    if SHARED_CHECK_RUNDIR.is_file():
        assert CHECK_RUNDIR.read_text() == SHARED_CHECK_RUNDIR.read_text(), (
            f"cp {SHARED_CHECK_RUNDIR} {CHECK_RUNDIR}"
        )


def test_a_sweep_exit_code_is_its_own_calls_and_read_from_its_sweep_json(tmp_path):
    """The CLI's code for a sweep comes from the sweep directory's sweep.json, collected per
    call: a sweep finished inside another call (a recipe's tune stage) is counted there only."""
    from runner.aggregate import SWEEP_FILE

    ok, bad, missing = tmp_path / "ok", tmp_path / "bad", tmp_path / "missing"
    for d, code in ((ok, 0), (bad, 1)):
        d.mkdir()
        (d / SWEEP_FILE).write_text(json.dumps({"exit_code": code}))
    with jobs.sweeps_finished() as outer:
        jobs.sweep_finished(ok)
        with jobs.sweeps_finished() as inner:
            jobs.sweep_finished(bad)
        jobs.sweep_finished(missing)
    jobs.sweep_finished(bad)  # no call open: nobody counts it
    assert inner == [bad] and outer == [ok, missing]
    assert [jobs.sweep_exit_code(d) for d in (ok, bad, missing)] == [0, 1, 1]
