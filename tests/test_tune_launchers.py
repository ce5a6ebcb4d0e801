"""stage=tune through Hydra's submitit launcher (hydra-submitit-launcher, the `slurm` extra).

submitit_local runs every trial as its own subprocess through submitit (pickled task, the job
folder, results read back): SLURM's code path without sbatch. The `slurm` preset
(conf/hydra/launcher/slurm.yaml) is checked down to the sbatch script submitit would submit.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import optuna
import pytest
from conftest import FAST, REPO, run_cli
from omegaconf import OmegaConf

from runner import tuning

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")


def test_submitit_local_runs_the_study(tmp_path):
    r = run_cli(
        [
            "-m",
            "stage=tune",
            *FAST,
            "hydra/launcher=submitit_local",
            "hydra/sweeper/pruner=none",
            "hydra.sweeper.study_name=sub",
            "hydra.sweeper.n_trials=2",
            "hydra.launcher.timeout_min=5",
            "hydra.sweeper.n_jobs=2",
        ],
        tmp_path,
    )
    assert r.code == 0, r.out
    assert "Submitit 'local'" in r.out  # the trials went through submitit, not the basic launcher
    d = tmp_path / "multirun" / "tune" / "sub"
    # two jobs in flight (as hydra.sweeper.n_jobs SLURM jobs would be): a journal file study
    study = optuna.load_study(
        study_name="sub", storage=tuning.open_storage(str(d / "optuna.journal"))
    )
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans  # side by side
    for t in study.trials:
        s = json.loads((d / str(t.number) / "summary.json").read_text())
        assert s["trial"] == t.number and s["val_acc"] == pytest.approx(t.value)
        assert sorted(t.intermediate_values) == [1, 2]  # the job reported to the study itself
    assert (d / "runs.csv").exists() and (d / "runs.html").exists()  # the sweep summary
    assert json.loads((d / "study.json").read_text())["states"]["COMPLETE"] == 2
    # submitit's job folders follow the sweep folder into the study folder
    assert len(list((d / ".submitit").glob("*/*_result.pkl"))) == 2
    assert not list((tmp_path / "multirun").glob("20*"))  # no stray dated sweep folder


def test_slurm_preset_composes_to_our_sbatch_script(tmp_path, monkeypatch):
    r = run_cli(
        ["stage=tune", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"],
        tmp_path,
    )
    assert r.code == 0, r.out
    launcher = OmegaConf.create(r.out).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb) == (180, 8, 32)
    assert OmegaConf.to_container(launcher)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"

    # what submitit would hand to sbatch: the launcher as Hydra builds it, stopped at submission
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from submitit.slurm import slurm

    from runner.config import register_configs

    srun = tmp_path / "bin" / "srun"  # submitit looks for srun before it builds an executor
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "config",
            return_hydra_config=True,
            overrides=[
                "stage=tune",
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=2",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
            ],
        )
    GlobalHydra.instance().clear()
    sbatch = {}

    class Submitted(Exception):
        pass

    def submit(self, command):
        sbatch["text"] = self._make_submission_file_text(command, "uid")
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", submit)
    job = instantiate(cfg.hydra.launcher)
    job.config = cfg
    with pytest.raises(Submitted):
        job.launch([["optim.lr=0.1"]], initial_job_idx=0)
    text = sbatch["text"]
    for line in (
        "--partition=gpu",
        "--gpus-per-node=2",
        "--ntasks-per-node=1",
        "--nodes=1",
        "--time=180",
        "--cpus-per-task=8",
        "--mem=32GB",
        f"--output={tmp_path / 'sweep'}/.submitit/%j/",
    ):
        assert f"#SBATCH {line}" in text, text
    assert f"{sys.executable} -u -m submitit.core._submit" in text  # the submitting Python


def test_a_dead_job_fails_its_trial_and_the_study_goes_on(tmp_path):
    """A SLURM job killed at its time limit (or preempted, or on a failed node) ends without a
    result: submitit raises UncompletedJobError. The trial is FAIL with the reason, retried
    with `retry`, and the worker asks for the next trial (a launcher that cannot submit at all
    still stops the sweep)."""
    from types import SimpleNamespace

    from hydra.core.utils import JobStatus
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.recipe_optuna_sweeper.sweeper import OptunaSweeper

    url = f"sqlite:///{tmp_path / 'dead.db'}"

    class Launcher:
        calls = 0

        def launch(self, job_overrides, initial_job_idx):
            Launcher.calls += 1
            if Launcher.calls == 1:
                raise UncompletedJobError(
                    "Job 42 (task: 0) with path ... has not produced any output (state: TIMEOUT)"
                )
            out = tmp_path / str(initial_job_idx)
            out.mkdir()
            (out / "summary.json").write_text(
                json.dumps({"stage": "train", "val_acc": 0.5, "epochs": 1})
            )
            hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
            return [SimpleNamespace(status=JobStatus.COMPLETED, hydra_cfg=hydra_cfg)]

    sw = OptunaSweeper(
        n_trials=2,
        n_jobs=1,
        direction="maximize",
        metric="val_acc",
        study_name="dead",
        storage=url,
        study_dir=None,
        sampler={"name": "random", "seed": 0},
        pruner=None,
        params={},
        warm_start=False,
        heartbeat_interval=30,
        grace_period=120,
        retry=1,
        edge_fraction=0.1,
    )
    sw.space = tuning.parse_search_space({"optim.lr": "interval(0.1, 0.2)"})
    sw.url, sw.launcher = url, Launcher()
    sw._write_outputs = lambda study, final: None
    study = optuna.create_study(
        study_name="dead", storage=tuning.open_storage(url), direction="maximize"
    )
    results = []
    sw._worker(study, results)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["reason"].startswith("job died: UncompletedJobError")
    assert trials[1].system_attrs["failed_trial"] == 0  # the retry replaces it in the budget
    assert trials[1].params == trials[0].params
