"""Our sweeper as a drop-in for the published hydra-optuna-sweeper 1.3 (docs/tune.md, "Coming
from hydra-optuna-sweeper"), and samplers that sample.

The published plugin's example apps (a sphere, a custom search space, two objectives) and the
behaviours its test file checks, written again here as tiny Hydra apps in a temp folder that
select `hydra/sweeper: optuna` and run with this repo's plugin (PYTHONPATH), as a user would.
Their configs are written the published plugin's way (storage: null, study_name, n_jobs,
max_failure_rate, range(), search_space, custom_search_space, direction lists).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import FAST, REPO
from omegaconf import OmegaConf

from runner import tuning

SPHERE = """
import hydra

@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg):
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return cfg.x ** 2 + cfg.y ** 2

if __name__ == "__main__":
    sphere()
"""

SPHERE_CONF = """
defaults:
  - override hydra/sweeper: optuna
hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5, 0, 5)
x: 1
y: 1
"""


def app(tmp_path: Path, script: str, conf: str, name: str = "app.py") -> Path:
    (tmp_path / "conf").mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(textwrap.dedent(script))
    (tmp_path / "conf" / "config.yaml").write_text(textwrap.dedent(conf))
    return tmp_path / name


def sweep(script: Path, *overrides: str, sweep_dir: bool = True):
    """`python app.py -m OVERRIDES` in the app's folder; (result, sweep folder). Run in this
    process (runpy, with Hydra's and logging's state isolated as runner/jobs.py does for the
    runner's own runs): the same Hydra main, without a Python start-up per sweep."""
    import contextlib
    import io
    import runpy
    from types import SimpleNamespace

    from runner.jobs import _in_dir, isolated_hydra

    out = script.parent / "out"
    argv = [str(script), "-m", *overrides] + ([f"hydra.sweep.dir={out}"] if sweep_dir else [])
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    saved_argv, full = sys.argv, os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            with _in_dir(str(script.parent), importable=True), isolated_hydra():
                sys.argv = argv
                try:
                    runpy.run_path(str(script), run_name="__main__")
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        if full is not None:
            os.environ["HYDRA_FULL_ERROR"] = full
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue()), out


def results(out: Path):
    return OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))


def trials(out: Path):
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- samplers
SPACE = {"x": "range(-5.0, 5.0, 0.5)", "y": "int(interval(0, 100))"}
KINDS = ["random", "tpe", "qmc", "gp", "cmaes", "nsgaii", "motpe", "grid", "default"]
TARGETS = [
    "RandomSampler",
    "TPESampler",
    "QMCSampler",
    "GPSampler",
    "CmaEsSampler",
    "NSGAIISampler",
    "GridSampler",
]


def five_points(spec, seed):
    """Five trials of a study on SPACE, asked the sweeper's way (tuning.ask, a sampler built
    for each trial number), told x^2 + y."""
    space = tuning.parse_search_space(SPACE).distributions
    grid = {k: tuning.grid_values(k, d) for k, d in space.items()}
    spec = dict(spec, seed=seed)
    study = optuna.create_study(direction="minimize")
    points = []
    for _ in range(5):
        trial = tuning.ask(study, lambda n: tuning.build_sampler(spec, n, 1, grid))
        p = tuple(tuning.suggest(trial, k, d) for k, d in space.items())
        study.tell(trial, p[0] ** 2 + p[1])
        points.append(p)
    if "grid_id" in study.trials[0].system_attrs:  # a grid trial gets the point of its grid id
        ids = [t.system_attrs["grid_id"] for t in study.trials]
        assert len(set(ids)) == 5 and len(set(points)) == 5
    return points


@pytest.mark.parametrize(
    "spec",
    [{"name": k} for k in KINDS] + [{"_target_": f"optuna.samplers.{t}"} for t in TARGETS],
    ids=KINDS + TARGETS,
)
def test_every_sampler_proposes_distinct_points_and_a_seed_repeats_them(spec):
    seeded = five_points(spec, 7)
    assert len(set(seeded)) == 5, seeded  # rebuilt with one seed per trial, not the same seed
    assert five_points(spec, 7) == seeded  # a seeded study is reproducible
    # unseeded: fresh points. Five uniform draws from SPACE's 2,121 points share one by chance
    # ~0.5% of the time (a CI run met it); a sampler rebuilt with one repeated seed would give
    # one point five times
    assert len(set(five_points(spec, None))) >= 4


# ----------------------------------------------------------------------------- search space
def test_the_published_grammar_and_its_deprecated_search_space():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    d = tuning.parse_search_space(
        {
            "a": "choice(true, false)",
            "b": "range(1,3)",
            "c": "shuffle(range(1,3))",
            "d": "interval(1, 5)",
            "e": "int(interval(1, 5))",
            "f": "tag(log, interval(1, 5))",
            "g": "tag(log, int(interval(1, 5)))",
            "h": "range(0.5, 5.5, step=1)",
        }
    ).distributions
    assert d["a"] == CategoricalDistribution([True, False])
    assert d["b"] == IntDistribution(1, 3)  # range()'s end is included, as published
    assert set(d["c"].choices) == {1, 2}  # shuffle(range()) is Hydra's own range: end excluded
    assert d["d"] == FloatDistribution(1, 5) and d["e"] == IntDistribution(1, 5)
    assert d["f"] == FloatDistribution(1, 5, log=True)
    assert d["g"] == IntDistribution(1, 5, log=True)
    assert d["h"] == FloatDistribution(0.5, 5.5, step=1)
    entry = tuning.search_space_entry
    assert entry("x", {"type": "int", "low": 0, "high": 10, "step": 2}) == IntDistribution(
        0, 10, step=2
    )
    assert entry("x", {"type": "float", "low": 1, "high": 100, "log": True}) == (
        FloatDistribution(1, 100, log=True)
    )
    assert entry("x", {"type": "categorical", "choices": [1, 2]}) == CategoricalDistribution([1, 2])
    assert tuning.grid_values("h", d["h"]) == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]


# ----------------------------------------------------------------------------- example apps
@pytest.mark.parametrize("with_commandline", [True, False])
def test_sphere_example(tmp_path, with_commandline):
    script = app(tmp_path, SPHERE, SPHERE_CONF)
    extra = ["x=choice(0, 1, 2)", "y=0"] if with_commandline else []
    p, out = sweep(
        script,
        "hydra.sweeper.n_trials=20",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=123",
        *extra,
    )
    assert p.returncode == 0, p.stderr
    r = results(out)
    rows = trials(out)
    assert r["name"] == "optuna" and len(rows) == 20
    assert r["best_value"] == min(float(t["value"]) for t in rows)
    if with_commandline:  # a fixed override is no parameter of the study
        assert "y" not in r["best_params"] and r["best_params"]["x"] == 0 and r["best_value"] == 0
    else:
        assert r["best_params"]["y"] in (-5, 0, 5) and (r["best_params"]["x"] * 2) % 1 == 0
    # storage: null is the published plugin's in-memory study: nothing kept beside the results
    assert not (out / "optuna.db").exists() and not (tmp_path / "multirun" / "tune").exists()


def test_range_end_included_and_grid_covers_every_point(tmp_path):
    script = app(tmp_path, SPHERE, SPHERE_CONF)
    p, out = sweep(script, "hydra/sweeper/sampler=grid", "x=range(1,3)", "y=choice(0, 5)")
    assert p.returncode == 0, p.stderr
    seen = {(float(t["params.x"]), float(t["params.y"])) for t in trials(out)}
    assert seen == {(x, y) for x in (1, 2, 3) for y in (0, 5)}  # 3 is in range(1,3); n_trials 6
    assert results(out)["best_value"] == 1


def test_grid_config_of_the_published_tests(tmp_path):
    conf = """
    defaults:
      - override hydra/sweeper: optuna
      - override hydra/sweeper/sampler: grid
    hydra:
      sweeper:
        direction: minimize
        study_name: sphere
        storage: null
        n_trials: 20
        experiment_sequence: hydra_plugins.hydra_optuna_sweeper._impl.OptunaExperimentSequence
        params:
          x: choice(-1, 1)
          y: range(-1.0, 1.0, step=1)
          z: choice("foo", "bar")
    x: 1
    y: 1
    z: foo
    """
    p, out = sweep(app(tmp_path, SPHERE, conf))
    assert p.returncode == 0, p.stderr
    r = results(out)
    assert len(trials(out)) == 12  # 2 x 3 x 2: n_trials is capped at the grid's size
    assert r["best_value"] == 1 and abs(r["best_params"]["x"]) == 1
    assert r["best_params"]["y"] == 0 and r["best_params"]["z"] in ("foo", "bar")


def test_multi_objective_example(tmp_path):
    script = """
    import hydra

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def binh_and_korn(cfg):
        return 4 * cfg.x ** 2 + 4 * cfg.y ** 2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2

    binh_and_korn()
    """
    conf = """
    defaults:
      - override hydra/sweeper: optuna
    hydra:
      sweeper:
        sampler:
          seed: 123
        direction: [minimize, minimize]
        study_name: multi-objective
        storage: null
        n_trials: 12
        params:
          x: range(0, 5, step=0.5)
          y: range(0, 3, step=0.5)
    x: 1
    y: 1
    """
    p, out = sweep(app(tmp_path, script, conf))
    assert p.returncode == 0, p.stderr
    front = results(out)["solutions"]
    assert front and len(results(out)["best_trials"]) == len(front)
    for s in front:
        x, y = s["params"]["x"], s["params"]["y"]
        assert s["values"] == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
        for o in front:  # a Pareto front: no solution dominates another
            assert (
                not all(a <= b for a, b in zip(o["values"], s["values"]))
                or o is s
                or (o["values"] == s["values"])
            )
    assert "NSGAIISampler" in p.stdout  # several directions: NSGA-II by default


def test_custom_search_space_example(tmp_path):
    script = """
    import hydra

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def multi_dimensional_sphere(cfg):
        return cfg.w ** 2 + cfg.x ** 2 + cfg.y ** 2 + cfg.z ** 2

    def configure(cfg, trial):
        x = trial.params["x"]
        trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
        trial.suggest_float("+w", 0.0, 1.0)  # a new key: +w, as the published docs say

    if __name__ == "__main__":
        multi_dimensional_sphere()
    """
    conf = """
    defaults:
      - override hydra/sweeper: optuna
    hydra:
      sweeper:
        sampler:
          seed: 123
        direction: minimize
        study_name: custom-search-space
        storage: null
        n_trials: 8
        n_jobs: 1
        params:
          x: range(-5.5, 5.5, 0.5)
          y: choice(-5, 0, 5)
        custom_search_space: .custom-search-space-objective.configure
    x: 1
    y: 1
    z: 100
    max_z_difference_from_x: 0.5
    """
    p, out = sweep(app(tmp_path, script, conf, "custom-search-space-objective.py"))
    assert p.returncode == 0, p.stderr
    best = results(out)["best_params"]
    assert set(best) == {"x", "y", "z", "+w"} and abs(best["z"] - best["x"]) <= 0.5
    assert 0.0 <= best["+w"] <= 1.0


def test_deprecated_search_space(tmp_path):
    conf = SPHERE_CONF.replace(
        """    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5, 0, 5)
""",
        """    n_trials: 5
    search_space:
      x:
        type: float
        low: -5.5
        high: 5.5
        step: 0.5
""",
    ).replace("    n_trials: 20\n", "")
    p, out = sweep(app(tmp_path, SPHERE, conf))
    assert p.returncode == 0, p.stderr
    assert "search_space is deprecated" in p.stdout + p.stderr
    xs = [float(t["params.x"]) for t in trials(out)]
    assert len(xs) == 5 and all((x * 2) % 1 == 0 and -5.5 <= x <= 5.5 for x in xs)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_max_failure_rate(tmp_path, rate):
    script = app(tmp_path, SPHERE, SPHERE_CONF)
    p, out = sweep(
        script, "+error=true", f"hydra.sweeper.max_failure_rate={rate}", "hydra.sweeper.n_trials=4"
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "RuntimeError: cfg.error is True" in p.stdout + p.stderr
    ran = trials(out)
    if rate < 1.0:  # the first failure is more than 0% of the trials: the study stops
        assert len(ran) == 1 and "max_failure_rate=0.0" in p.stderr
    else:  # never more than 100%: every trial runs (and fails)
        assert [t["state"] for t in ran] == ["FAIL"] * 4


def test_any_app_gets_optunas_study_name_and_prunes_with_the_reporter(tmp_path):
    """No `name`, no `tune` key, study_name unset: Optuna names the study; the default storage
    keeps it (our difference), so the app reports epochs and the median pruner stops trials."""
    script = """
    import hydra, optuna
    from runner.tuning import trial_reporter

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def train(cfg):
        reporter = trial_reporter()
        assert reporter is not None
        for step in range(5):
            loss = cfg.lr * (step + 1)
            reporter.report(step, loss)
            if reporter.should_prune():
                raise optuna.TrialPruned()
        return loss

    train()
    """
    conf = """
    defaults:
      - override hydra/sweeper: optuna
      - override hydra/sweeper/pruner: median
    hydra:
      sweeper:
        direction: minimize
        n_trials: 6
        pruner:
          n_startup_trials: 1
          n_warmup_steps: 0
        params:
          lr: interval(0.0, 1.0)
    lr: 0.5
    """
    p, out = sweep(app(tmp_path, script, conf))
    assert p.returncode == 0, p.stderr
    study = OmegaConf.load(out / "study.json")
    assert str(study.study_name).startswith("no-name-")  # Optuna's own name
    assert (out / "optuna.db").exists()
    rows = trials(out)
    assert {t["state"] for t in rows} <= {"COMPLETE", "PRUNED"} and len(rows) == 6
    assert any(t["state"] == "PRUNED" for t in rows)


# ----------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    "bad, says",
    [
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be >= 1"),
        ("optim.lr=interval(1,0)", "interval(1.0, 0.0) needs start < end"),
        ("optim.lr=tag(log, interval(0,1))", "needs start > 0 on a log scale"),
        ("hydra.sweeper.direction=sideways", "hydra.sweeper.direction='sideways' is not one of"),
    ],
)
def test_a_bad_sweeper_setting_is_one_line_and_exit_2(tmp_path, bad, says):
    r = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "stage=tune", *FAST, bad],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: ") and says in lines[0], r.stderr
