"""Optuna parts of stage=tune, shared by the sweeper plugin and the trial jobs.

The sweeper (hydra_plugins/recipe_optuna_sweeper) asks the study for trials and launches each
as a Hydra job; the job (runner/stages/tune.py) reports its validation metric every epoch
through a TrialReporter and stops when the study's pruner says so. Both ends open the same
storage from its URL, so workers on one or many machines share one study.

Here: search-space parsing (Hydra's sweep grammar -> Optuna distributions), storage, sampler
and pruner builders, the job-side reporter, and the sweep's outputs (trials.csv, best.yaml,
Optuna's plots, report.html). Optuna is imported inside functions: `--help` stays fast.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError

log = logging.getLogger("runner")

# the sampler options by name (the published hydra-optuna-sweeper's names); `default` is random
# for one direction and nsgaii for several; `motpe` is TPESampler, which took MOTPESampler's
# place in Optuna 4
SAMPLERS = {
    "random": "RandomSampler",
    "qmc": "QMCSampler",
    "tpe": "TPESampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "motpe": "TPESampler",
    "grid": "GridSampler",
}
SAMPLER_NAMES = ("default", *SAMPLERS)
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}
DIRECTIONS = ("maximize", "minimize")
METRICS = ("val_acc", "val_loss")
STORAGE_FILES = {"sqlite": "optuna.db", "journal": "optuna.journal"}
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# study user attributes the sweeper writes and the jobs read
ATTR_METRIC, ATTR_PRUNER = "runner.metric", "runner.pruner"


# ----------------------------------------------------------------------------- search space
@dataclass
class SearchSpace:
    """What the sweeper samples (Optuna distributions by config key) and what it fixes."""

    distributions: dict[str, Any]
    fixed: list[str]  # plain `key=value` overrides passed to every trial


def parse_search_space(params: dict[str, Any], arguments: Sequence[str] = ()) -> SearchSpace:
    """`hydra.sweeper.params` plus command-line overrides -> Optuna distributions.

    Grammar (Hydra's own sweep syntax, as in the published Optuna sweeper):
    `interval(a, b)` float uniform, `tag(log, interval(a, b))` log-uniform,
    `int(interval(a, b))` integer, `range(a, b, step)` stepped with the end included (the
    published plugin's meaning: range(1, 3) is 1, 2 or 3), `shuffle(range(a, b))` categorical
    over Hydra's own range (end excluded, as the published plugin), `choice(a, b, c)` or
    `a,b,c` categorical. A YAML list is a categorical too. A plain value is fixed for every
    trial; null drops the key (an overlay's way to remove a default one). Command-line
    overrides win over `params` of the same key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parser = OverridesParser.create()
    problems: list[str] = []
    entries: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = "choice(" + ", ".join(format_value(v) for v in value) + ")"
        entries[str(key)] = f"{key}={value}"
    fixed: list[str] = []
    for arg in arguments:
        o = parser.parse_override(arg)
        if o.is_sweep_override():
            entries[o.get_key_element()] = arg
        else:
            entries.pop(o.get_key_element(), None)
            fixed.append(arg)
    dists: dict[str, Any] = {}
    for key, text in entries.items():
        try:
            o = parser.parse_override(text)
        except Exception as e:  # noqa: BLE001 -- Hydra's grammar error names the position
            problems.append(f"hydra.sweeper.params.{key}: cannot parse {text!r}: {e}")
            continue
        if not o.is_sweep_override():
            fixed.append(text)
            continue
        try:
            if o.is_range_sweep() and o.value().shuffle:
                dists[key] = to_distribution(ChoiceSweep(list=[v for v in o.sweep_iterator()]))
            else:
                dists[key] = to_distribution(o.value())
        except ValueError as e:
            problems.append(f"hydra.sweeper.params.{key}: {e}")
    if problems:
        raise ConfigError(problems)
    return SearchSpace(dists, fixed)


def to_distribution(sweep) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    log_scale = "log" in (sweep.tags or set())
    if isinstance(sweep, ChoiceSweep):
        choices = list(sweep.list)
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise ValueError(
                f"choice() values must be numbers, strings, booleans or null, got {bad}"
            )
        if len(choices) < 1:
            raise ValueError("choice() needs at least one value")
        return CategoricalDistribution(choices)
    if isinstance(sweep, IntervalSweep):
        lo, hi = sweep.start, sweep.end
        if not lo < hi:
            raise ValueError(f"interval({lo}, {hi}) needs start < end, e.g. interval({hi}, {lo})")
        if log_scale and lo <= 0:
            raise ValueError(
                f"tag(log, interval({lo}, {hi})) needs start > 0 on a log scale, e.g. "
                f"tag(log, interval({hi / 1000:g}, {hi}))"
            )
        if isinstance(lo, int) and isinstance(hi, int):
            return IntDistribution(lo, hi, log=log_scale)
        return FloatDistribution(float(lo), float(hi), log=log_scale)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if log_scale:
            raise ValueError(
                "range() is stepped; for a log scale use tag(log, int(interval(a, b)))"
            )
        if not step > 0 or stop < start:
            raise ValueError(
                f"range({start}, {stop}, step={step}) is empty: it needs start <= end and step > 0"
            )
        # the end is included, as in the published plugin (range(1, 3): 1, 2, 3); an end off the
        # step grid is rounded down to the last step (counted, not summed: 0.1 steps drift)
        n = math.floor((stop - start) / step + 1e-9) + 1
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, start + (n - 1) * step, step=step)
        return FloatDistribution(float(start), round(start + (n - 1) * step, 12), step=float(step))
    raise ValueError(f"unsupported sweep {sweep!r}; use interval, range or choice")


def suggest(trial, name: str, dist) -> Any:
    """Ask `trial` for `name` through Optuna's public suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def contains(dist, value) -> bool:
    """Whether `value` is a legal value of `dist` (for the warm-start trial): Optuna's public
    trial constructor validates each parameter against its distribution."""
    import optuna

    try:
        optuna.trial.create_trial(params={"p": value}, distributions={"p": dist}, value=0.0)
    except (ValueError, TypeError):
        return False
    return True


def search_space_entry(key: str, spec: Any) -> Any:
    """One entry of the published plugin's deprecated `search_space` ({type: int | float |
    categorical, low, high, step, log, choices}) as an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"hydra.sweeper.search_space.{key}"
    if not isinstance(spec, dict) or spec.get("type") not in ("int", "float", "categorical"):
        raise ConfigError(
            f"{where}={spec!r}: expected a mapping with type: int, float or categorical "
            "(or write it in hydra.sweeper.params, e.g. interval(0, 1))"
        )
    unknown = sorted(set(spec) - {"type", "low", "high", "step", "log", "choices"})
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys {unknown}; allowed: low, high, step, log, choices"
        )
    if spec["type"] == "categorical":
        if not spec.get("choices"):
            raise ConfigError(f"{where}: type categorical needs a non-empty `choices` list")
        return CategoricalDistribution(list(spec["choices"]))
    if spec.get("low") is None or spec.get("high") is None:
        raise ConfigError(f"{where}: type {spec['type']} needs `low` and `high`")
    log_scale, step = bool(spec.get("log", False)), spec.get("step")
    try:
        if spec["type"] == "int":
            return IntDistribution(
                int(spec["low"]),
                int(spec["high"]),
                log=log_scale,
                step=int(step) if step is not None else 1,
            )
        return FloatDistribution(
            float(spec["low"]),
            float(spec["high"]),
            log=log_scale,
            step=float(step) if step is not None else None,
        )
    except ValueError as e:  # Optuna's own check: low <= high, log needs low > 0, ...
        raise ConfigError(f"{where}={dict(spec)}: {e}") from None


def grid_values(name: str, dist) -> list[Any]:
    """The values a grid sampler visits for `dist`: every choice, every step (end included)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if dist.step is None or dist.log:
        raise ConfigError(
            f"hydra.sweeper.params.{name}: hydra/sweeper/sampler=grid needs a finite set of "
            f"values, got a continuous range {dist.low}..{dist.high}; use range(a, b, step) or "
            "choice(...)"
        )
    n = math.floor((dist.high - dist.low) / dist.step + 1e-9) + 1
    values = [dist.low + i * dist.step for i in range(n)]
    return values if isinstance(dist.step, int) else [round(v, 12) for v in values]


_PLAIN = re.compile(r"[A-Za-z0-9_./:@+-]+")


def format_value(v: Any) -> str:
    """A value as Hydra override text (strings quoted only when they need it)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in ("null", "true", "false") and not _is_number(s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- storage
def storage_url(spec: str | None, study_dir: Path, n_jobs: int = 1) -> str | None:
    """The study's storage as a URL both the sweeper and the jobs can open; None in memory.

    `memory` (the sweeper's word for an explicit null, the published plugin's in-memory study):
    None. `auto` (the default; also None here): a SQLite file in the study folder for one worker, a journal file for several
    (SQLite locks under parallel writers) - whichever already exists there wins, so a resumed
    study finds its file. `journal`: the journal file in the study folder. A path ending in
    .journal or .log: a journal file there. Anything with `://`: an RDB URL (sqlite, postgresql,
    mysql) as Optuna takes it.
    """
    study_dir = Path(study_dir).resolve()
    sqlite_file, journal_file = (
        study_dir / STORAGE_FILES["sqlite"],
        study_dir / STORAGE_FILES["journal"],
    )
    if spec == "memory":
        return None
    if spec in (None, "", "null", "auto"):
        if journal_file.exists() and not sqlite_file.exists():
            return str(journal_file)
        if sqlite_file.exists() or n_jobs <= 1:
            return f"sqlite:///{sqlite_file}"
        return str(journal_file)
    spec = str(spec)
    if spec == "journal":
        return str(journal_file)
    if spec.startswith("sqlite:///") and not spec.startswith("sqlite:////"):
        rel = spec[len("sqlite:///") :]
        return spec if rel in ("", ":memory:") else f"sqlite:///{Path(rel).resolve()}"
    if "://" in spec:
        return spec
    if spec.endswith((".journal", ".log")):
        return str(Path(spec).resolve())
    raise ConfigError(
        f"hydra.sweeper.storage={spec!r} is not a storage; expected auto (SQLite file "
        "in the study folder), null (in memory), 'journal', a *.journal file path, or an RDB "
        "URL such as sqlite:///optuna.db or postgresql://user@host/db"
    )


# what SQLite (through SQLAlchemy) says for the write failures RunFileError names
_SQLITE_WRITE_ERRORS = {
    "database or disk is full": "ENOSPC",
    "attempt to write a readonly database": "EROFS",
    "unable to open database file": "EACCES",
    "disk i/o error": "EIO",
}


def storage_write_error(e: BaseException, url: str | None):
    """A RunFileError (exit 3) for a study storage that could not be written: a journal file's
    OSError, or SQLite's "database or disk is full" (and its read-only, cannot-open and I/O
    kin) as SQLAlchemy raises them; None for anything else. The message names the storage
    file, the condition and what survived."""
    import errno
    import os

    from runner.errors import RunFileError

    if url is None:
        return None
    path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite:") else url
    survived = (
        f"The trials recorded so far are in {url} as they were (a storage write is whole or "
        "not at all); once fixed, the same command resumes the study"
    )
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RunFileError):
            return e
        if isinstance(e, OSError) and e.errno is not None:
            return RunFileError(e.filename or path, e, survived)
        text = str(e).lower()
        for pattern, name in _SQLITE_WRITE_ERRORS.items():
            if pattern in text and "://" in url:
                code = getattr(errno, name)
                return RunFileError(path, OSError(code, os.strerror(code), path), survived)
        e = e.__cause__ or e.__context__
    return None


def open_storage(url: str | None):
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        Path(url.split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        # wait for a writer's lock instead of failing at once (jobs report while the sweeper tells)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    return _rdb_storage(url, kwargs)


def _rdb_storage(url: str, kwargs: dict[str, Any], tries: int = 6):
    """RDBStorage, retried when another worker creates the schema of a fresh database at the same
    moment: Optuna checks for its tables, then creates them (and stamps alembic_version), so two
    workers starting together on an empty PostgreSQL database collide (a duplicate key on the
    table's type, a table that already exists). The loser's transaction rolls back; once the
    winner commits, a retry finds the tables and goes on."""
    import random

    import optuna
    import sqlalchemy.exc as sa_exc

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError) as e:
            clash = isinstance(e, sa_exc.IntegrityError) or "already exists" in str(e)
            if not clash or attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)


def dashboard_command(url: str | None) -> str:
    return f"optuna-dashboard {url}" if url else "(in-memory study: no dashboard)"


# ----------------------------------------------------------------------------- sampler, pruner
def _spec(spec: Any, key: str) -> dict[str, Any]:
    if spec is None:
        return {"name": "none"} if key == "pruner" else {"name": "random"}
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict):
        return dict(spec)
    raise ConfigError(
        f"hydra.sweeper.{key}={spec!r} must be a name or a mapping with `name` "
        "(or `_target_`) and keyword arguments"
    )


def _unknown(key: str, name: str, options) -> ConfigError:
    import difflib

    near = difflib.get_close_matches(str(name), list(options), n=2, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(x) for x in near)}?" if near else ""
    return ConfigError(
        f"hydra.sweeper.{key}.name={name!r} is not one of "
        f"{', '.join(options)}{hint} (or give `_target_: optuna.samplers.X`)"
        if key == "sampler"
        else f"hydra.sweeper.{key}.name={name!r} is not one of {', '.join(options)}{hint}"
    )


def check_sampler(spec: Any) -> None:
    s = _spec(spec, "sampler")
    if "_target_" not in s and s.get("name", "default") not in SAMPLER_NAMES:
        raise _unknown("sampler", s.get("name"), SAMPLER_NAMES)


def sampler_name(spec: Any, n_objectives: int = 1) -> str:
    """The option's name (`default` resolved), or the class name of a `_target_`."""
    s = _spec(spec, "sampler")
    if "_target_" in s:
        return str(s["_target_"]).rsplit(".", 1)[-1]
    name = str(s.get("name", "default"))
    if name == "default":
        return "nsgaii" if n_objectives > 1 else "random"
    return name


def trial_seed(seed: int | None, trial_number: int | None) -> int | None:
    """The seed of trial `trial_number`'s sampler: drawn from (seed, trial number)."""
    if seed is None or trial_number is None:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(trial_number)]).generate_state(1)[0])


def build_sampler(
    spec: Any,
    trial_number: int | None = None,
    n_objectives: int = 1,
    grid: dict[str, list[Any]] | None = None,
):
    """The sampler that proposes trial `trial_number`: an option by name (SAMPLERS) or any
    `_target_`; the remaining keys are the class's keyword arguments.

    The sweeper builds it anew for every trial, its `seed` drawn from (seed, trial number): the
    same seed for every trial would propose the same point every time, and one instance for the
    whole sweep would replay its draws in a resumed study or a second worker. What a sampler
    learns lives in the study (Optuna samplers read the trials, CMA-ES and NSGA-II their state
    from the trials' attributes), so nothing is lost. QMC and grid keep their seed: their
    points are numbered by the study (a grid id, a sequence index) and the seed only orders or
    scrambles them, so one seed must hold for the whole study. A seeded study is
    reproducible; an unseeded one draws fresh points. `grid`: the grid sampler's values.
    """
    import optuna

    s = _spec(spec, "sampler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if "_target_" in s:
            return _instantiate_sampler(s, trial_number, grid)
        name = sampler_name(s, n_objectives)
        if name not in SAMPLERS:
            raise _unknown("sampler", name, SAMPLER_NAMES)
        s.pop("name", None)
        cls = getattr(optuna.samplers, SAMPLERS[name])
        if cls not in _study_indexed():
            s["seed"] = trial_seed(s.get("seed"), trial_number)
        if cls is optuna.samplers.GridSampler:
            s.setdefault("search_space", grid or {})
        return _construct(cls, s, f"hydra/sweeper/sampler={name}")


def _study_indexed():
    import optuna

    return (optuna.samplers.QMCSampler, optuna.samplers.GridSampler)


def _instantiate_sampler(s: dict[str, Any], trial_number: int | None, grid):
    import optuna
    from hydra.utils import get_class

    s.pop("name", None)
    s.pop("_partial_", None)  # the published plugin's grid option: we give its search space
    target = str(s.pop("_target_"))
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 -- Hydra wraps import errors in several types
        raise ConfigError(
            f"hydra.sweeper.sampler._target_={target!r} cannot be imported ({e}); expected a "
            "sampler class such as optuna.samplers.TPESampler"
        ) from None
    if isinstance(cls, type) and issubclass(cls, optuna.samplers.GridSampler):
        s.setdefault("search_space", grid or {})
    indexed = isinstance(cls, type) and issubclass(cls, _study_indexed())
    if s.get("seed") is not None and not indexed:
        s["seed"] = trial_seed(s["seed"], trial_number)
    return _construct(cls, s, f"hydra.sweeper.sampler._target_={target}")


def _construct(cls, kwargs: dict[str, Any], what: str):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(
            f"{what} with {kwargs}: {type(e).__name__}: {e}; see the arguments of "
            f"optuna.samplers.{cls.__name__}"
        ) from None


def pruner_spec(spec: Any) -> dict[str, Any]:
    s = _spec(spec, "pruner")
    if "_target_" not in s and s.get("name", "none") not in PRUNERS:
        raise _unknown("pruner", s.get("name"), PRUNERS)
    return s


def build_pruner(spec: Any):
    """median, hyperband or none (or `_target_`); remaining keys are the pruner's kwargs."""
    import optuna

    s = pruner_spec(spec)
    if "_target_" in s:
        from hydra.utils import instantiate

        s.pop("name", None)
        return instantiate(s)
    name = s.pop("name", "none")
    return getattr(optuna.pruners, PRUNERS[name])(**s)


def next_trial_number(study) -> int:
    """The number `study.ask()` gives next, asked by one worker at a time in this process: the
    first waiting trial's (ask runs those first), else one past the last."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    return waiting[0] if waiting else len(trials)


def ask(study, sampler_for: Callable[[int], Any]):
    """`study.ask()` with the sampler built for the trial's own number (`sampler_for(number)`).

    The sampler has to be in place before ask (relative samplers - CMA-ES, GP, QMC, NSGA-II's
    crossover, multivariate TPE - draw at ask), so it is built for the predicted number; when
    another process asked in between, the trial's remaining parameters are drawn by the one
    built for the number it got."""
    predicted = next_trial_number(study)
    study.sampler = sampler_for(predicted)
    trial = study.ask()
    if trial.number != predicted:
        study.sampler = sampler_for(trial.number)
    return trial


def optimization_results(study) -> dict[str, Any]:
    """optimization_results.yaml as the published plugin writes it: the best trial's params and
    value, or for several directions the Pareto front (`solutions`); plus `best_trials`, the
    numbers of the trials it lists."""
    from optuna.trial import TrialState

    out: dict[str, Any] = {"name": "optuna"}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        front = study.best_trials if complete else []
        out["solutions"] = [{"params": t.params, "values": list(t.values)} for t in front]
        out["best_trials"] = [t.number for t in front]
    elif complete:
        best = study.best_trial
        out.update(best_params=best.params, best_value=best.value, best_trials=[best.number])
    else:
        out.update(best_params={}, best_value=None, best_trials=[])
    return out


# ----------------------------------------------------------------------------- job side
# what the sweeper gives a job of an app without a `tune` config key, as environment variables
# (hydra.job.env_set); trial_reporter() reads them
ENV_TRIAL, ENV_STORAGE, ENV_STUDY = "RECIPE_TUNE_TRIAL", "RECIPE_TUNE_STORAGE", "RECIPE_TUNE_STUDY"


def trial_reporter() -> TrialReporter | None:
    """Pruning for any Hydra app tuned by this sweeper: the running trial's reporter, or None
    outside a study (or with an in-memory one, which no other process can reach)::

        reporter = trial_reporter()
        for epoch in range(epochs):
            loss = train_one_epoch(...)
            if reporter is not None:
                reporter.report(epoch, loss)
                if reporter.should_prune():
                    raise optuna.TrialPruned()  # the sweeper records the trial as pruned
    """
    import os

    number = os.environ.get(ENV_TRIAL)
    if number is None or not os.environ.get(ENV_STORAGE):
        return None
    return open_trial_reporter(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(number))


class TrialReporter:
    """What a trial job hands to the training loop: report the metric, ask whether to stop.

    Writes intermediate values straight to the study's storage and asks the study's pruner,
    exactly what optuna.Trial.report/should_prune do, from a process that did not ask the trial.
    """

    def __init__(self, study, storage, trial_id: int, number: int, metric: str):
        self.study, self.storage, self.trial_id, self.number = study, storage, trial_id, number
        self.metric = metric
        self.reported: dict[int, float] = {}

    def report(self, epoch: int, value: float) -> None:
        if value is None or not math.isfinite(value):
            return  # a NaN epoch ends the run anyway (NonFiniteLoss); nothing to compare
        self.storage.set_trial_intermediate_value(self.trial_id, int(epoch), float(value))
        self.reported[int(epoch)] = float(value)

    def should_prune(self) -> bool:
        if not self.reported:
            return False
        return bool(self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)))


def open_trial_reporter(url: str, study_name: str, number: int) -> TrialReporter | None:
    """The reporter of trial `number`, or None when that trial is no longer running (a re-run
    of a finished trial's overrides trains without touching the study)."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    attrs = storage.get_study_user_attrs(study_id)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=build_pruner(attrs.get(ATTR_PRUNER)),
    )
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
    state = storage.get_trial(trial_id).state
    if state != TrialState.RUNNING:
        log.warning(
            "tune: trial %d of study %r is %s, not running: training without reporting",
            number,
            study_name,
            state.name,
        )
        return None
    return TrialReporter(study, storage, trial_id, int(number), attrs.get(ATTR_METRIC, "val_acc"))


# ----------------------------------------------------------------------------- sweep outputs
def trial_rows(study, metric: Any, root: Path | None = None) -> list[dict[str, Any]]:
    """One row per trial for trials.csv and the report."""
    names = objective_names(metric, len(study.directions))
    rows = []
    for t in study.get_trials(deepcopy=False):
        d = t.user_attrs.get("dir")
        if d and root is not None:
            try:
                d = str(Path(d).resolve().relative_to(Path(root).resolve()))
            except ValueError:
                pass
        row = {
            "number": t.number,
            "state": t.state.name,
            **dict(zip(names, t.values or [None] * len(names))),
            "epochs": t.user_attrs.get("epochs"),
            "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
        }
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row.update(
            {
                "dir": d,
                "reason": t.user_attrs.get("reason"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
        rows.append(row)
    return rows


def best_trial(study):
    """The best complete trial; None before one completes, and for several directions (their
    best trials are the Pareto front: optimization_results)."""
    from optuna.trial import TrialState

    if len(study.directions) > 1:
        return None
    return (
        study.best_trial
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        else None
    )


def objective_names(metric: Any, n_objectives: int) -> list[str]:
    """Column names of the objective values: the metric(s), or value_0, value_1, ..."""
    names = list(metric) if isinstance(metric, (list, tuple)) else [str(metric)]
    if len(names) == n_objectives:
        return names
    return [f"value_{i}" for i in range(n_objectives)] if n_objectives > 1 else ["value"]


def edge_warnings(
    params: dict[str, Any], distributions: dict[str, Any], fraction: float
) -> list[str]:
    """Best values within `fraction` of a range's end (on its own scale): widen that range."""
    from optuna.distributions import CategoricalDistribution

    out = []
    for key, v in params.items():
        dist = distributions.get(key)
        if dist is None:
            continue
        if isinstance(dist, CategoricalDistribution):
            nums = [
                c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)
            ]
            # 0 (no weight decay, no dropout) is a natural end, not an edge to widen past
            if len(nums) == len(dist.choices) >= 3 and v in (min(nums), max(nums)) and v != 0:
                end = "largest" if v == max(nums) else "smallest"
                out.append(
                    f"best {key}={v!r} is the {end} of its choices {list(dist.choices)}: "
                    f"add values beyond it"
                )
            continue
        lo, hi = float(dist.low), float(dist.high)
        if dist.log:
            pos = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        else:
            pos = (v - lo) / (hi - lo)
        if pos <= fraction or pos >= 1 - fraction:
            end = "upper" if pos >= 1 - fraction else "lower"
            out.append(
                f"best {key}={v:.4g} lies near the {end} edge of its range [{dist.low:g}, "
                f"{dist.high:g}]{' (log scale)' if dist.log else ''}: widen the range "
                f"past it and search again"
            )
    return out


def best_yaml(overrides: Sequence[str], groups: Sequence[str], header: Sequence[str]) -> str:
    """The best trial's overrides as a primary config on top of conf/config.yaml
    (runner.config.overrides_yaml); the trial's own bookkeeping (stage=tune, tune.*) is left
    out and stage becomes train."""
    from runner import jobs
    from runner.config import overrides_yaml

    kept = [o for o in overrides if jobs.classify(o) not in ("stage", "trial", "hydra", "location")]
    return overrides_yaml(kept, groups, header, primary=True)


def _figure(ax):
    import numpy as np

    return np.ravel(ax)[0].figure


def save_plots(study, out, metric: str) -> list[str]:
    """Optuna's own plots (matplotlib backend) into <study dir>/plots/; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "categorical units" chatter
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) > 1:  # the trade-off between the objectives, not a history
        names = objective_names(metric, len(study.directions))
        plots = [("pareto_front", ovm.plot_pareto_front, {"target_names": names}, 1)]
        return _save(plots, study, out, complete)
    plots = [("history", ovm.plot_optimization_history, {"target_name": metric}, 1)]
    if len(study.best_trial.params if complete else {}) >= 1:
        # importances (fANOVA) mean little on a handful of trials, and take seconds
        plots += [
            ("importances", ovm.plot_param_importances, {"target_name": metric}, 5),
            ("slice", ovm.plot_slice, {"target_name": metric}, 1),
        ]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate_values", ovm.plot_intermediate_values, {}, 0))
    return _save(plots, study, out, complete)


def _save(plots, study, out, complete) -> list[str]:
    import optuna

    paths = []
    for name, fn, kwargs, need in plots:
        if len(complete) < need:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study, **kwargs)
            paths.append(out.save_figure(_figure(ax), f"optuna_{name}"))
        except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as e:
            log.warning("tune: Optuna's %s plot skipped: %s", name, e)
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
    return paths


def study_summary(
    study, metric: Any, direction: Any, url: str | None, n_trials: int, warnings_: list[str]
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {
        s: sum(t.state.name == s for t in trials)
        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    }
    best = best_trial(study)
    return {
        "study_name": study.study_name,
        "storage": url,
        "direction": direction,
        "metric": metric,
        "n_trials": n_trials,
        "trials": len(trials),
        "states": counts,
        "epochs_trained": sum(int(t.user_attrs.get("epochs") or 0) for t in trials),
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "dir": best.user_attrs.get("dir"),
        },
        "pareto_front": None
        if len(study.directions) == 1
        else optimization_results(study)["solutions"],
        "warnings": warnings_,
        "dashboard": dashboard_command(url) if url else None,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def report_html(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    plots: list[str],
    space: dict[str, Any],
    sampler: Any,
    pruner: Any,
) -> str:
    from runner.report import Report, esc, images, kv_table, pre, table

    st = summary["states"]
    best = summary["best"] or {}
    rep = Report(
        f"tune: study {summary['study_name']}",
        subtitle=f"{summary['direction']} {summary['metric']}  ·  storage {summary['storage']}",
        kpis={
            f"best {summary['metric']}": best.get("value"),
            "best trial": best.get("number"),
            "complete / pruned / failed": f"{st['COMPLETE']} / {st['PRUNED']} / {st['FAIL']}",
            "epochs trained": summary["epochs_trained"],
        },
    )
    if summary["warnings"]:
        rep.add(
            "Warnings",
            "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in summary["warnings"]) + "</ul>",
        )
    if best:
        link = (
            f'<p><a href="{esc(best["dir"])}/report.html">trial {best["number"]} report</a> · '
            f"run it again: <code>python -m runner --config-dir "
            f"{esc(summary.get('study_dir', '.'))} --config-name best</code></p>"
            if best.get("dir")
            else ""
        )
        rep.add("Best trial", link + kv_table(best.get("params", {})))
    if plots:
        rep.add("Optuna plots", images(plots))
    linked = []
    for r in rows:
        r = dict(r)
        if r.get("dir"):
            r["dir"] = f'<a href="{esc(r["dir"])}/report.html">{esc(r["dir"])}</a>'
        linked.append(r)
    rep.add("Trials", table(linked, raw=("dir",)))
    rep.add("Search space", table([{"key": k, "distribution": repr(v)} for k, v in space.items()]))
    rep.add(
        "Study",
        kv_table(
            {
                "sampler": sampler,
                "pruner": pruner,
                "storage": summary["storage"],
                "n_trials (budget)": summary["n_trials"],
                "dashboard": summary["dashboard"],
            }
        ),
    )
    rep.add("Summary", pre(__import__("json").dumps(summary, indent=2, default=str)))
    return rep.render()
