"""stage=tune: an Optuna study as a Hydra multirun (hydra_plugins/recipe_optuna_sweeper).

Tiny sweeps on synthetic data through the real CLI: trials land in the storage with the right
states, a NaN or crashing trial never stops the sweep, a resumed study repeats nothing and
honours its budget, an aggressive pruner prunes, joblib runs trials side by side, a killed
worker's trial is failed and retried, and best.yaml runs with --config-dir. Two worker
processes share one study on a journal file and on a real PostgreSQL server (started here from
the installed server binaries; .ci/run installs Debian's `postgresql` package).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
from conftest import FAST, REPO, assert_contract, compose, run_cli
from omegaconf import OmegaConf

from runner import tuning
from runner.errors import ConfigError

# one torch thread per trial: joblib runs two trials side by side on these 2 cores
TUNE = ["-m", "stage=tune", *FAST, "trainer.threads=1"]
# stage=tune prunes by default; these tests want every trial to run to its end
NO_PRUNING = ["hydra/sweeper/pruner=none"]


def study_of(cwd: Path, name: str, journal: bool = False, url: Optional[str] = None):
    d = cwd / "multirun" / "tune" / name
    url = url or (str(d / "optuna.journal") if journal else f"sqlite:///{d / 'optuna.db'}")
    return optuna.load_study(study_name=name, storage=tuning.open_storage(url)), d


def states(study):
    return [t.state.name for t in study.get_trials()]


def write_experiment(cwd: Path, name: str, text: str) -> str:
    d = cwd / "conf" / "experiment"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return str(cwd / "conf")


# ----------------------------------------------------------------------------- units
def test_search_space_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    s = tuning.parse_search_space(
        {
            "optim.lr": "tag(log, interval(1e-5, 1e-2))",
            "model.kwargs.width": "int(interval(8, 64))",
            "trainer.batch_size": [32, 64],
            "optim.weight_decay": None,
            "trainer.epochs": 3,
            "optim": "choice(adam, sgd)",
        },
        ["data.noise=range(0.1, 0.4, 0.1)", "seed=1", "optim.lr=interval(0.1, 0.2)"],
    )
    d = s.distributions
    assert d["optim.lr"] == FloatDistribution(0.1, 0.2)  # the command line wins
    assert d["model.kwargs.width"] == IntDistribution(8, 64)
    assert d["trainer.batch_size"] == CategoricalDistribution([32, 64])
    assert d["optim"] == CategoricalDistribution(["adam", "sgd"])
    # range() includes its end, as in the published hydra-optuna-sweeper
    assert d["data.noise"].step == pytest.approx(0.1) and d["data.noise"].high == pytest.approx(0.4)
    assert "optim.weight_decay" not in d  # null removes a default key
    assert sorted(s.fixed) == ["seed=1", "trainer.epochs=3"]
    log_space = tuning.parse_search_space({"a": "tag(log, int(interval(1, 64)))"}).distributions[
        "a"
    ]
    assert log_space == IntDistribution(1, 64, log=True)
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.optim.lr: .*start > 0"):
        tuning.parse_search_space({"optim.lr": "tag(log, interval(0, 1))"})


def test_samplers_pruners_storage_and_edges(tmp_path):
    assert isinstance(tuning.build_sampler({"name": "qmc", "seed": 0}), optuna.samplers.QMCSampler)
    assert isinstance(tuning.build_sampler("tpe"), optuna.samplers.TPESampler)
    # per-trial seeds: the same trial number draws the same value, another number another one
    a, b = (tuning.build_sampler({"name": "random", "seed": 0}, n) for n in (3, 4))
    study = optuna.create_study()
    dist = optuna.distributions.FloatDistribution(0, 1)
    t = study.ask()
    va = a.sample_independent(study, t, "x", dist)
    vb = b.sample_independent(study, t, "x", dist)
    va2 = tuning.build_sampler({"name": "random", "seed": 0}, 3).sample_independent(
        study, t, "x", dist
    )
    assert va == va2 and va != vb
    with pytest.raises(ConfigError, match="did you mean 'tpe'"):
        tuning.check_sampler({"name": "tpee"})
    assert isinstance(
        tuning.build_pruner({"name": "hyperband", "min_resource": 1}),
        optuna.pruners.HyperbandPruner,
    )
    assert isinstance(tuning.build_pruner({"name": "median"}), optuna.pruners.MedianPruner)
    assert isinstance(tuning.build_pruner(None), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner.name='medain'"):
        tuning.build_pruner("medain")

    d = tmp_path / "s"
    assert tuning.storage_url(None, d, 1) == f"sqlite:///{d.resolve() / 'optuna.db'}"
    assert tuning.storage_url(None, d, 2) == str(d.resolve() / "optuna.journal")
    assert tuning.storage_url("postgresql://u@h/db", d) == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match="is not a storage"):
        tuning.storage_url("optuna.db", d)

    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    bs = optuna.distributions.CategoricalDistribution([32, 64, 128])
    w = tuning.edge_warnings(
        {"optim.lr": 0.08, "trainer.batch_size": 128},
        {"optim.lr": lr, "trainer.batch_size": bs},
        0.1,
    )
    assert len(w) == 2 and "upper edge" in w[0] and "largest" in w[1]
    assert tuning.edge_warnings({"optim.lr": 3e-3}, {"optim.lr": lr}, 0.1) == []


@pytest.mark.parametrize(
    "study_metric, metric, reported",
    [
        ("val_acc", "accuracy", [0.9, 0.6]),
        ("val_acc", "balanced_accuracy", [0.5, 0.55]),
        ("val_acc", "macro_f1", [0.4, 0.45]),
        ("val_acc", "val_loss", [-0.7, -0.65]),
        ("val_loss", "macro_f1", [0.7, 0.65]),
    ],
)
def test_the_pruner_is_told_the_figure_the_objective_is_made_of(study_metric, metric, reported):
    """With the study's default metric (val_acc: the run's selection score) a trial reports
    each epoch's figure of the run's `metric`, not its accuracy: accuracy falls here while
    balanced accuracy and macro-F1 rise, so the pruner would judge the wrong curve."""
    from types import SimpleNamespace

    from runner.stages.tune import prune_by

    class Reporter:
        def __init__(self):
            self.metric, self.reported = study_metric, {}

        def report(self, epoch, value):
            self.reported[epoch] = value

        def should_prune(self):
            return False

    def rec(epoch, acc, bal, f1, loss, evaluated=True):
        return SimpleNamespace(
            epoch=epoch,
            evaluated=evaluated,
            val_acc=acc,
            val_balanced_acc=bal,
            val_macro_f1=f1,
            val_loss=loss,
        )

    reporter = Reporter()
    callback = prune_by(reporter, metric)
    epochs = [rec(1, 0.9, 0.5, 0.4, 0.7), rec(2, 0.6, 0.55, 0.45, 0.65), rec(3, 0, 0, 0, 9, False)]
    assert [callback(r) for r in epochs] == [None] * 3
    assert reporter.reported == dict(zip((1, 2), reported))


# ----------------------------------------------------------------------------- the CLI
def test_sweep_resumes_without_repeats_and_best_yaml_runs(tmp_path):
    args = TUNE + NO_PRUNING + ["hydra.sweeper.study_name=t", "hydra.sweeper.n_trials=2"]
    r = run_cli(args, tmp_path)
    assert r.code == 0, r.out
    study, d = study_of(tmp_path, "t")
    assert states(study) == ["COMPLETE"] * 2
    # warm start: trial 0 is the current config (Adam's 3e-4, no decay); FAST fixes the batch
    # size on the command line, which takes it out of the search space
    assert study.trials[0].params == {"optim.lr": 3e-4, "optim.weight_decay": 0.0}
    for t in study.trials:  # trial directories are named by trial number
        s = json.loads((d / str(t.number) / "summary.json").read_text())
        assert s["stage"] == "tune" and s["trial"] == t.number and s["epochs"] == 2
        # the objective is the run's headline accuracy: the best val-loss epoch's, as the
        # recipe, the ladder and squeeze rank runs (not the last epoch's val_acc)
        assert s["best_val_acc"] == pytest.approx(t.value)
        assert sorted(t.intermediate_values) == [1, 2]  # reported every epoch
    assert_contract(*(d / str(n) for n in range(2)))
    rows = list(csv.DictReader((d / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["COMPLETE"] * 2 and "params.optim.lr" in rows[0]
    assert (d / "plots" / "optuna_history.png").stat().st_size > 1000
    html = (d / "report.html").read_text()
    assert "optuna_history.png" in html and "Best trial" in html
    summary = json.loads((d / "study.json").read_text())
    assert summary["states"]["COMPLETE"] == 2 and summary["epochs_trained"] == 4
    finished = [t.datetime_complete for t in study.trials]

    # the same command with a budget of 3 resumes: the two finished trials count, one more runs
    r = run_cli(args[:-1] + ["hydra.sweeper.n_trials=3"], tmp_path)
    assert r.code == 0, r.out
    assert "2 trial(s) already, budget 3" in r.out
    study, _ = study_of(tmp_path, "t")
    assert [t.number for t in study.trials] == [0, 1, 2] and states(study) == ["COMPLETE"] * 3
    assert [t.datetime_complete for t in study.trials[:2]] == finished
    assert (d / "2" / "summary.json").exists()
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # no repeats

    # best.yaml is a config to run with --config-dir
    best = study.best_trial
    text = (d / "best.yaml").read_text()
    assert f"Best trial {best.number}" in text and "tune" not in OmegaConf.create(text)
    r = run_cli(["--config-dir", str(d), "--config-name", "best", "trainer.epochs=1"], tmp_path)
    assert r.code == 0, r.out
    cfg = OmegaConf.load(r.run_dir / ".hydra" / "config.yaml")
    assert cfg.stage.name == "train" and cfg.data.kind == "synthetic"
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.optim.weight_decay == best.params["optim.weight_decay"]


def test_nan_crash_and_pruned_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    conf = write_experiment(
        tmp_path,
        "outcomes",
        """
optim:
  lr: 0.003
hydra:
  sweeper:
    study_name: outcomes
    n_trials: 6
    metric: val_loss
    direction: minimize
    # every combination once: the NaN, the crash and the pruned trial are never the last word
    sampler: {_target_: optuna.samplers.BruteForceSampler, seed: 0}
    # forced aggressive: any trial worse than the (one) finished trial's median is stopped
    pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
    params:
      optim.weight_decay: null
      trainer.batch_size: null
      optim.lr: choice(0.003, 1e-7, 1e30)
      model.kwargs.width: choice(32, -1)
""",
    )
    r = run_cli(
        ["-m", "--config-dir", conf, "experiment=outcomes", *TUNE[1:], "trainer.epochs=3"], tmp_path
    )
    assert r.code == 1, r.out  # the sweep ran to its end; 1 says some trials failed (DESIGN.md)
    study, d = study_of(tmp_path, "outcomes")
    by = {(t.params["optim.lr"], t.params["model.kwargs.width"]): t for t in study.trials}
    assert len(study.trials) == 6 and len(by) == 6
    good = study.trials[0]  # the warm start: the config's own lr and width
    assert (good.params["optim.lr"], good.params["model.kwargs.width"]) == (0.003, 32)
    assert good.state.name == "COMPLETE" and sorted(good.intermediate_values) == [1, 2, 3]

    nan = by[(1e30, 32)]
    assert nan.state.name == "FAIL" and "non-finite" in nan.user_attrs["reason"]
    assert json.loads((d / str(nan.number) / "summary.json").read_text())["status"] == "nonfinite"
    for lr in (0.003, 1e-7, 1e30):
        crash = by[(lr, -1)]
        assert crash.state.name == "FAIL" and crash.user_attrs["reason"].startswith("crashed")

    slow = by[(1e-7, 32)]  # barely moves: worse than the finished trial after epoch 1
    assert slow.state.name == "PRUNED" and list(slow.intermediate_values) == [1]
    s = json.loads((d / str(slow.number) / "summary.json").read_text())
    assert s["status"] == "pruned" and s["epochs"] == 1 and slow.user_attrs["epochs"] == 1
    assert len((d / str(slow.number) / "metrics.csv").read_text().strip().splitlines()) == 2
    assert_contract(d / str(slow.number))
    assert "1 complete, 1 pruned, 4 failed" in r.out


def test_joblib_runs_two_trials_at_once_on_a_journal(tmp_path):
    r = run_cli(
        TUNE
        + NO_PRUNING
        + [
            "hydra.sweeper.study_name=par",
            "hydra.sweeper.n_trials=2",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
        ],
        tmp_path,
    )
    assert r.code == 0, r.out
    study, d = study_of(tmp_path, "par", journal=True)
    assert not (d / "optuna.db").exists()  # several workers: the journal file, not SQLite
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert states(study) == ["COMPLETE"] * 2
    assert all((d / str(n) / "summary.json").exists() for n in range(2))
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials]
    overlap = any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert overlap, spans  # each worker asked for its next trial while the other was running


def two_workers(tmp_path, name: str, storage: str, url: Optional[str] = None, n: int = 4):
    """Two `python -m runner -m stage=tune` on one study at once: every trial of the budget
    ran exactly once, in one worker, into its own trial directory."""
    from concurrent.futures import ThreadPoolExecutor

    args = (
        TUNE
        + NO_PRUNING
        + [
            f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.storage={tuning.format_value(storage)}",
            f"hydra.sweeper.n_trials={n}",
        ]
    )
    # two `python -m runner -m stage=tune` at once: two processes, as two machines would be
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_cli(args, tmp_path, process=True), range(2)))
    assert [r.code for r in results] == [0, 0], results[0].out + results[1].out
    study, d = study_of(tmp_path, name, journal=url is None, url=url)
    # both workers may ask for the last slot at once: the later number is put back as WAITING
    # (not run, not counted; test_the_budget_holds_when_two_workers_take_the_last_slot)
    extra = [t for t in study.trials if t.state.name == "WAITING"]
    assert all(t.number >= n and not t.params for t in extra), extra
    ran_trials = [t for t in study.trials if t.state.name != "WAITING"]
    assert sorted(t.number for t in ran_trials) == list(range(n))  # no number twice, none lost
    assert [t.state.name for t in ran_trials] == ["COMPLETE"] * n
    assert all((d / str(k) / "summary.json").exists() for k in range(n))
    ran = [int(x) for r in results for x in re.findall(r"tune: trial (\d+) complete", r.out)]
    assert sorted(ran) == list(range(n))  # each trial ran in exactly one worker
    assert sum("warm start: trial 0" in r.out for r in results) == 1
    # the warm start is trial 0 only, not enqueued by both workers (a duplicate trial)
    assert study.trials[0].params == {"optim.lr": 3e-4, "optim.weight_decay": 0.0}
    assert len({tuple(sorted(t.params.items())) for t in ran_trials}) == n
    return study, results


def test_the_budget_holds_when_two_workers_take_the_last_slot(tmp_path):
    """Two workers (two sweepers, each with its own storage object, as two processes have) both
    see one trial left and both ask, held at a barrier in between so the race always happens.
    Only the lower number runs; the other is put back as WAITING without parameters, and a
    resumed study with a larger budget runs it as the next number: no gap, no repeat."""
    import threading

    from hydra_plugins.recipe_optuna_sweeper.sweeper import OptunaSweeper

    url = str(tmp_path / "race.journal")
    gate = threading.Barrier(2, timeout=60)

    def sweeper(n_trials, race):
        sw = OptunaSweeper(
            n_trials=n_trials,
            n_jobs=1,
            direction="maximize",
            metric="val_acc",
            study_name="race",
            storage=url,
            study_dir=None,
            sampler={"name": "random", "seed": 0},
            pruner=None,
            params={},
            warm_start=False,
            heartbeat_interval=30,
            grace_period=120,
            retry=0,
            edge_fraction=0.1,
        )
        sw.space = tuning.parse_search_space({"optim.lr": "interval(0.1, 0.2)"})
        sw.url = url
        budget_left = sw._budget_left

        def checked_then_wait(study):  # both workers pass the check before either asks
            left = budget_left(study)
            if race and left == 1:
                gate.wait()
            return left

        def run_trial(study, trial, overrides):  # the job: a value from the sampled lr
            study.tell(trial, float(trial.params["optim.lr"]))
            return trial.number

        sw._budget_left, sw._run_trial = checked_then_wait, run_trial
        study = optuna.create_study(
            study_name="race",
            storage=tuning.open_storage(url),
            direction="maximize",
            load_if_exists=True,
        )
        return sw, study

    workers = [sweeper(1, race=True) for _ in range(2)]
    results = [[], []]
    threads = [
        threading.Thread(target=sw._worker, args=(st, res))
        for (sw, st), res in zip(workers, results)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [[], [0]]  # one worker ran trial 0, the other stopped
    study, _ = study_of(tmp_path, "race", url=url)
    assert states(study) == ["COMPLETE", "WAITING"]
    assert (
        study.trials[1].params == {} and "beyond the budget" in study.trials[1].user_attrs["reason"]
    )

    # resumed with a budget of 2: the waiting trial is the next one, sampled now
    sw, st = sweeper(2, race=False)
    res = []
    sw._worker(st, res)
    study, _ = study_of(tmp_path, "race", url=url)
    assert res == [1] and states(study) == ["COMPLETE", "COMPLETE"]
    assert study.trials[1].params["optim.lr"] != study.trials[0].params["optim.lr"]
    assert study.trials[1].user_attrs.get("reason") is None


def test_two_worker_processes_share_one_study(tmp_path):
    two_workers(tmp_path, "two", "journal")


# ----------------------------------------------------------------------------- PostgreSQL
def _postgres_bin() -> Optional[Path]:
    """The folder of the installed server's initdb/pg_ctl: on PATH, or Debian's
    /usr/lib/postgresql/<version>/bin (not on PATH there); None when no server is installed."""
    found = shutil.which("initdb") and shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = [
        Path(p)
        for p in glob.glob("/usr/lib/postgresql/*/bin")
        if Path(p, "initdb").exists() and Path(p, "pg_ctl").exists()
    ]
    dirs.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")])
    return dirs[-1] if dirs else None


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for this test session: initdb into a temp folder, started
    with pg_ctl on a unix socket in that folder only (no TCP port, so nothing to collide with),
    trust auth, stopped and deleted at teardown. As root it runs as the `postgres` user
    (initdb refuses root). Skips only when no server is installed at all (a laptop without
    PostgreSQL); installed but failing to start is a test failure. Yields a function that
    creates a fresh database and returns its SQLAlchemy URL."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server installed (initdb/pg_ctl not on PATH nor in "
            "/usr/lib/postgresql/*/bin); .ci/run installs Debian's postgresql"
        )
    try:
        import psycopg2
    except ImportError as e:  # the test extras carry the driver: a broken install, not a skip
        pytest.fail(
            f"{e}: PostgreSQL is installed but its driver is not; "
            "pip install -e '.[test]' (psycopg2-binary)"
        )

    # in /tmp, not $TMPDIR: short (a socket path has ~107 chars) and reachable by `postgres`
    tmp = "/tmp" if Path("/tmp").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="recipe-pg-", dir=tmp))
    prefix = []
    if os.geteuid() == 0:
        import pwd

        user = "postgres" if _has_user("postgres") else "nobody"
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        assert shutil.which("runuser"), "running as root needs runuser (util-linux) for initdb"
        prefix = ["runuser", "-u", user, "--"]
    data, log = root / "data", root / "server.log"

    def sh(*cmd, timeout=120):
        p = subprocess.run(
            prefix + [str(c) for c in cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            check=False,
        )
        server_log = log.read_text() if log.exists() else ""
        assert p.returncode == 0, f"{cmd}: {p.stdout}{p.stderr}\n{server_log}"

    opts = (
        f"-k {root} -c listen_addresses='' -p 5432 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    try:
        sh(bindir / "initdb", "-D", data, "-U", "recipe", "--auth=trust", "-E", "UTF8", "--no-sync")
        sh(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start")
        count = iter(range(1000))

        def new_database(name: str) -> str:
            db = f"{name}_{next(count)}"
            con = psycopg2.connect(dbname="postgres", user="recipe", host=str(root), port=5432)
            con.autocommit = True
            con.cursor().execute(f'CREATE DATABASE "{db}"')
            con.close()
            return f"postgresql+psycopg2://recipe@/{db}?host={root}&port=5432"

        yield new_database
    finally:
        subprocess.run(
            prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
            cwd=root,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_workers_opening_a_fresh_postgres_database_at_once(postgres):
    """Optuna creates its schema check-then-create: workers starting together on an empty
    database collide; open_storage retries until the winner's tables are there."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    for _ in range(3):  # a fresh database each round: the race is in the schema creation
        url, gate = postgres("fresh"), Barrier(6)

        def open_it(_, url=url, gate=gate):
            gate.wait()
            return tuning.open_storage(url)

        with ThreadPoolExecutor(6) as pool:
            storages = list(pool.map(open_it, range(6)))
        study_id = storages[0].create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
        assert all(s.get_study_id_from_name("s") == study_id for s in storages)
        for s in storages:
            s.engine.dispose()


def test_two_worker_processes_share_one_study_on_postgres(tmp_path, postgres):
    url = postgres("two_pg")
    _, results = two_workers(tmp_path, "two_pg", url, url=url)  # the study read back from it
    assert all(f"study 'two_pg' in {url}" in r.out for r in results)  # no file storage used
    assert not list((tmp_path / "multirun" / "tune" / "two_pg").glob("optuna.*"))


def test_killed_workers_trial_is_failed_and_retried(tmp_path):
    d = tmp_path / "multirun" / "tune" / "stale"
    params = OmegaConf.to_container(
        OmegaConf.load(REPO / "conf" / "stage" / "tune.yaml").hydra.sweeper.params
    )
    space = tuning.parse_search_space(params).distributions
    study = optuna.create_study(
        study_name="stale",
        direction="maximize",
        storage=tuning.open_storage(f"sqlite:///{d / 'optuna.db'}"),
    )
    ghost = study.ask(space)  # a worker asked for it, then died without a word
    ghost.set_user_attr("heartbeat", time.time() - 3600)

    r = run_cli(
        TUNE
        + NO_PRUNING
        + ["hydra.sweeper.study_name=stale", "hydra.sweeper.n_trials=1", "hydra.sweeper.retry=1"],
        tmp_path,
    )
    assert r.code == 0, r.out
    study, _ = study_of(tmp_path, "stale")
    assert states(study) == ["FAIL", "COMPLETE"]  # the budget of 1 counts the retry, once
    assert study.trials[1].params == ghost.params
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert "marked failed" in r.out


def test_typo_in_search_space_is_a_config_error(tmp_path):
    r = run_cli(TUNE + ["hydra.sweeper.study_name=typo", "optim.lrr=interval(0.1, 0.2)"], tmp_path)
    assert r.code == 2, r.out
    assert "optim.lrr" in r.out
    assert not (tmp_path / "multirun" / "tune" / "typo" / "0").exists()


def test_warm_start_from_a_run_is_the_inherited_config(tmp_path):
    # a source run (its recorded config is all from= reads) with a distinctive lr and
    # augmentation, both inside the search space
    src = tmp_path / "src"
    (src / ".hydra").mkdir(parents=True)
    (src / "summary.json").write_text('{"stage": "train"}')  # a finished run
    OmegaConf.save(
        compose(FAST + ["stage=train", "optim.lr=2e-3", "aug=light"]),
        src / ".hydra" / "config.yaml",
    )
    # trial 0 is the config a job gets after from= (the source's lr and aug option), not
    # stage=tune's own (3e-4, aug=none) read before the lineage is applied
    r = run_cli(
        TUNE
        + NO_PRUNING
        + [
            f"from={src}",
            "hydra.sweeper.study_name=w",
            "hydra.sweeper.n_trials=1",
            "trainer.epochs=1",
            "aug=choice(none, light)",
        ],
        tmp_path,
    )
    assert r.code in (0, 1), r.out
    study, d = study_of(tmp_path, "w")
    assert study.trials[0].params == {"optim.lr": 2e-3, "optim.weight_decay": 0.0, "aug": "light"}
    used = OmegaConf.load(d / "0" / "config.yaml")
    assert used.optim.lr == pytest.approx(2e-3) and used.aug.name == "light"
    assert re.search(r"trial 0 is the current config \{'optim.lr': 0.002.*'aug': 'light'", r.out)

    # a wrong source fails before any trial: exit 2, one message naming from=
    bad = run_cli(TUNE + ["from=no/such/run", "hydra.sweeper.study_name=bad"], tmp_path)
    assert bad.code == 2 and "config error: from=" in bad.out and "Traceback" not in bad.out
    assert not (tmp_path / "multirun" / "tune" / "bad" / "0").exists()
