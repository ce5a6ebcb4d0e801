"""The job layer: how a run is planned, run and read back.

Every way of running "this config in that directory, then tell me what happened" goes
through here: the command line, the recipe's stages, the Python API (`runner.run`,
`runner.load`) and the tests.

- `classify(override)`: what an override is (the one table, `CLASSES`); the questions the
  other modules ask of a command's overrides (which go on to a sub-run, which an experiment
  file keeps, which `from=` never takes from a source, ...) are answered from it.
- `plan(stage, overrides)`: Hydra's compose API, then `from=`, then validation, with the
  user's keys passed in; every problem in one ConfigError.
- `run(plan_or_argv, run_dir, how=...)`: in this process (Hydra's and logging's global state
  saved and restored around the run, imports paid once) or as a child process. A run that
  fails leaves `error.json` saying why, whoever started it.
- `RunRecord.read(run_dir)`: status, exit code, headline accuracy, checks, error, config,
  lineage and weights of a finished (or failed) run directory.

Light to import (no torch): the CLI and `--help` use the classifier.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from runner.config import override_key  # light: omegaconf is imported inside its functions

log = logging.getLogger("runner")

# ----------------------------------------------------------------------------- overrides
# What an override (or a dotted config key) is, by its key: the longest matching prefix
# wins ("hydra.run.dir" is a location, "hydra.launcher" Hydra's own). Keys in no row are
# identity: they decide what the run computes (model, data, optim, trainer, seed, checks...).
CLASSES: Dict[str, str] = {
    "stage": "stage",  # which stage runs, and stage.params.*: the stage's own settings
    "from": "from",  # where a run starts: an earlier run's outcome (runner/lineage.py)
    "init_from": "init_from",  # weights to start from (a warm start)
    "resume": "resume",  # continue an interrupted run in its own directory
    "tune": "trial",  # the tune sweeper's bookkeeping for one trial (tune.trial, tune.storage)
    "trust_run_configs": "trust",  # the user's own; never taken from a run dir or reapplied
    "experiment": "experiment",  # an experiment file: a set of identity keys
    "hydra.run": "location",  # where the run writes
    "hydra.sweep": "location",
    "hydra.output_subdir": "location",
    "hydra": "hydra",  # Hydra's own settings: launcher, sweeper, logging, callbacks
}

# the questions asked of a command's overrides, each a set of classes
# from=: keys of these classes are taken from the source run (the rest belong to one run)
INHERITED = frozenset({"identity"})
# a composite stage's command handed on to the runs it starts (the recipe's stages): the
# composite decides each one's stage, start and directory
HANDED_ON = frozenset({"identity", "experiment", "init_from", "resume", "trial", "trust"})
# an experiment file written from a run (regularized.yaml, a study's best trial): what it is
EXPERIMENT_FILE = frozenset({"identity"})
# what tells jobs of one sweep apart in its table (runner/aggregate.py)
SWEEP_IDENTITY = frozenset({"identity", "stage", "from", "init_from", "experiment"})
# what `resume=<dir>` reapplies from the interrupted run's recorded overrides
REAPPLIED_ON_RESUME = frozenset(
    {"identity", "stage", "from", "init_from", "experiment", "trial", "hydra"}
)
# keys a user set that count as "this command set it" for from=/lineage records
COMMAND = frozenset({"identity"})
COMMAND_WITH_PER_RUN = frozenset({"identity", "stage", "from", "init_from", "resume", "trial"})


def key_class(key: str) -> str:
    """The class (CLASSES) of a dotted key or group (`hydra/launcher` counts as hydra)."""
    key = str(key).lstrip("~+")
    best, cls = -1, "identity"
    for prefix, c in CLASSES.items():
        if (key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "/")) and len(
            prefix
        ) > best:
            best, cls = len(prefix), c
    return cls


def classify(override: str) -> str:
    """The class of one override (`model.name=resnet18` -> identity)."""
    return key_class(override_key(override))


def select(overrides: Iterable[str], classes: Iterable[str]) -> List[str]:
    """The overrides whose class is in `classes`, in order."""
    want = set(classes)
    return [str(o) for o in overrides if classify(str(o)) in want]


def keys_of(overrides: Iterable[str], classes: Iterable[str]) -> List[str]:
    """The keys of the overrides whose class is in `classes`."""
    return [override_key(o) for o in select(overrides, classes)]


def reapplied_on_resume(recorded: Sequence[str], argv: Sequence[str]) -> List[str]:
    """An interrupted run's recorded overrides that `resume=` reapplies: those of the
    REAPPLIED_ON_RESUME classes that the command does not set itself."""
    mine = {override_key(a) for a in argv if "=" in a}
    return [
        str(o)
        for o in recorded
        if "=" in str(o) and override_key(o) not in mine and classify(str(o)) in REAPPLIED_ON_RESUME
    ]


# ----------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """A run ready to go: its stage, the user's overrides and the config they compose to
    (`from=` applied, validated)."""

    stage: str
    overrides: List[str]
    cfg: Any = None  # DictConfig; None when planned without composing (argv only)
    lineage: Optional[Dict[str, Any]] = None
    config_dir: Optional[str] = None  # an experiment repo's conf/ (--config-dir)
    multirun: bool = False
    cwd: str = field(default_factory=os.getcwd)

    def argv(self, run_dir: Optional[Union[str, Path]] = None) -> List[str]:
        """The command line that runs this plan (`python -m runner ARGV`)."""
        args = ["-m"] if self.multirun else []
        if self.config_dir:
            args += ["--config-dir", str(self.config_dir)]
        args += [f"stage={self.stage}"] if self.stage else []
        args += [o for o in self.overrides if override_key(o) != "stage"]
        if run_dir is not None:
            where = "hydra.sweep.dir" if self.multirun else "hydra.run.dir"
            args = [a for a in args if override_key(a) != where] + [f"{where}={run_dir}"]
        return args


def _split_stage(stage: Optional[str], overrides: Sequence[str]) -> tuple:
    overrides = [str(o) for o in overrides]
    named = [o.split("=", 1)[1] for o in overrides if override_key(o) == "stage" and "=" in o]
    stage = stage or (named[-1] if named else None)
    return stage, [o for o in overrides if override_key(o) != "stage"]


@contextlib.contextmanager
def _composer(config_dir: Optional[str]):
    """Hydra's compose API on the packaged configs (and an experiment repo's conf/ in front);
    inside a running Hydra task, that task's own search path."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    from hydra import initialize_config_dir

    from runner.__main__ import CONF_DIR
    from runner.config import register_configs

    register_configs()
    with isolated_hydra():
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            yield


def _search_path(config_dir: Optional[str]) -> List[str]:
    """An experiment repo's conf/ for the compose API: on Hydra's search path (it adds files,
    e.g. experiment/my_exp.yaml, to the packaged ones; the CLI's --config-dir also lets them
    replace packaged files of the same name)."""
    return [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []


def compose(overrides: Sequence[str], config_dir: Optional[str] = None):
    """The config `python -m runner OVERRIDES` composes (no from=, no validation)."""
    from hydra import compose as hydra_compose

    with _composer(config_dir):
        return hydra_compose(
            config_name="config", overrides=[*_search_path(config_dir), *overrides]
        )


def plan(
    stage: Optional[str] = None,
    overrides: Sequence[str] = (),
    *,
    config_dir: Optional[Union[str, Path]] = None,
    cwd: Optional[Union[str, Path]] = None,
    multirun: bool = False,
) -> Plan:
    """Compose `stage=<stage> OVERRIDES` with Hydra, apply `from=`, validate; a Plan, or one
    ConfigError listing every problem (each naming its key, or the override it came from)."""
    from runner.config import validate
    from runner.errors import ConfigError

    stage, rest = _split_stage(stage, overrides)
    cwd = str(Path(cwd or os.getcwd()).resolve())
    cdir = str(Path(config_dir).expanduser().resolve()) if config_dir else None
    args = ([f"stage={stage}"] if stage else []) + [
        o[1:] if o.startswith("+from=") else o for o in rest
    ]
    p = Plan(stage or "", rest, config_dir=cdir, multirun=multirun, cwd=cwd)
    if multirun:  # a sweep's values are the sweeper's to expand: checked when it launches
        return p
    with _composer(cdir):
        # the stage is part of the base: each override is diagnosed on the stage it is for
        head = [a for a in args if override_key(a) == "stage"]
        cfg, problems = _compose_all(
            _search_path(cdir) + head, [a for a in args if override_key(a) != "stage"]
        )
        if problems:
            raise ConfigError(problems)
        from runner.lineage import apply

        with _in_dir(cwd, importable=True):
            cfg, lineage = apply(cfg, args, cwd)
            validate(cfg, cwd, user_overrides=args)
    p.stage = str(cfg.stage.name)
    p.cfg, p.lineage = cfg, lineage.as_dict() if lineage else None
    return p


def _compose_all(base: List[str], args: List[str]) -> tuple:
    """(config, []) or (None, problems): on a failure each override is tried on its own to
    name the ones at fault (`model.nme=x: model has no key 'nme'; did you mean ...`)."""
    try:
        return _hydra_compose([*base, *args]), []
    except Exception:  # noqa: BLE001 -- find the bad overrides below (the failure path only)
        pass
    try:  # the keys that exist, for "did you mean" (composing costs ~0.4 s: only on failure)
        keys = flat_keys(_hydra_compose(base))
    except Exception:  # noqa: BLE001 -- the packaged config itself: compose_each says so
        keys = []
    return compose_each(base, args, None, " ".join(args) or "(no overrides)", keys, cli_problem)


# ----------------------------------------------------------------------------- compose
# A composite stage's sub-runs (ladder rungs, the recipe's stages) are composed inside the
# running Hydra task, on its search path (an experiment repo's conf/ included).
def _hydra_compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().job.config_name if HydraConfig.initialized() else None
    return hydra_compose(config_name=name or "config", overrides=list(overrides))


def compose_stage(config_name: str, stage: str):
    """`stage=<stage>` composed alone from `config_name` (what the stage's YAML sets)."""
    from hydra import compose as hydra_compose

    return hydra_compose(config_name=config_name, overrides=[f"stage={stage}"])


def sweep_job_config(loader, sweep_cfg, overrides: Sequence[str]) -> tuple:
    """(config, group choices, keys taken from the source run or None) of a job a sweeper
    launches with `overrides`, as runner/app.py builds it in the job: Hydra's config loader
    composes it (the sweeper's own, as its launcher will), then `from=`'s lineage applies.
    A bad from= is a ConfigError (every job would fail the same way)."""
    from omegaconf import OmegaConf, open_dict, read_write

    from runner import lineage
    from runner.stages import stage_flag

    if not sweep_cfg.get("from") or stage_flag(str(sweep_cfg.stage.name), "OWN_FROM"):
        return sweep_cfg, sweep_cfg.hydra.runtime.choices, None
    job = loader.load_sweep_config(sweep_cfg, list(overrides))
    choices = OmegaConf.to_container(job.hydra.runtime.choices)
    with read_write(job), open_dict(job):  # a job's task config has no hydra node
        del job["hydra"]
    result, lin = lineage.inherit(
        job,
        list(overrides),
        str(sweep_cfg.hydra.runtime.cwd),
        str(sweep_cfg.hydra.job.config_name or "config"),
    )
    return result, choices, lin.from_source


def check_sweep_batch(sweeper, batch: Sequence[Sequence[str]]) -> None:
    """Compose each job of a sweep's batch before any runs (Hydra's own check, the sweeper
    API's validate_batch_is_legal): a typo in a key fails once, before the first trial."""
    sweeper.validate_batch_is_legal([list(b) for b in batch])


def flat_keys(cfg) -> List[str]:
    """Every dotted key of a config, nodes and leaves (for close-match suggestions)."""
    from omegaconf import OmegaConf

    out: List[str] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                out.append(key)
                walk(v, key)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def first_line(e: BaseException) -> str:
    """The first line of an error's message, without Hydra's `use +key=value` advice."""
    lines = [
        x.strip()
        for x in str(e).splitlines()
        if x.strip() and not x.strip().startswith("To append to your config")
    ]
    return lines[0] if lines else type(e).__name__


def compose_problem(e: BaseException, override: Optional[str], keys: Sequence[str]) -> str:
    """A Hydra compose failure of `override` in our words (never Hydra's `use +key` advice)."""
    import re

    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from runner.config import _close, moved_key_in, moved_key_problem

    key = override_key(override) if override else None
    moved = moved_key_problem(key) or moved_key_in(e)
    if moved:
        return moved
    if isinstance(e, OverrideParseException):
        return f"not a valid override ({first_line(e)})"
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^'/]+)'", str(e))
        opts = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)*)", str(e))
        if m:
            group, choice = m.group(1), m.group(2)
            options = [x.strip() for x in opts.group(1).splitlines() if x.strip()] if opts else []
            listed = f" (options: {', '.join(options)})" if options else ""
            return f"{choice!r} is not an option of {group}{listed}{_close(choice, options)}"
        return first_line(e)
    cause = e.__cause__
    if (
        isinstance(e, ConfigCompositionException)
        and key
        and (
            isinstance(cause, (ConfigKeyError, ConfigAttributeError))
            or str(e).startswith("Could not override")
        )
    ):
        return f"{key} is not in the config{_close(key, keys)}"
    if isinstance(cause, ValidationError):
        return f"bad value: {first_line(cause)}"
    return first_line(cause if cause is not None else e)


def cli_problem(e: BaseException, override: Optional[str], keys: Sequence[str]) -> str:
    """compose_problem, with an unknown key said as the command line says it
    (runner.__main__.unknown_key_message, without its head and its --cfg advice)."""
    from hydra.errors import ConfigCompositionException

    from runner.config import moved_key_problem

    moved = moved_key_problem(override_key(override) if override else None)
    if moved:
        return moved
    if (
        override
        and isinstance(e, ConfigCompositionException)
        and str(e).startswith("Could not override")
        and e.__cause__ is not None
    ):
        from runner.__main__ import unknown_key_message

        msg = unknown_key_message(override, e) or ""
        msg = msg.removeprefix(f"config error: {override}: ")
        return msg.replace(" (python -m runner --cfg job prints every key)", "")
    return compose_problem(e, override, keys)


def compose_each(
    base: Sequence[str],
    extra: Sequence[str],
    where: Optional[str],
    whole: str,
    keys: Sequence[str],
    explain=None,
) -> tuple:
    """Compose base + extra: (config, []), or (None, problems) naming each override of `extra`
    that fails on its own (`where: override: why`), else the whole (`whole: why`)."""
    explain = explain or compose_problem
    head = f"{where}: " if where else ""
    try:
        return _hydra_compose([*base, *extra]), []
    except Exception as e:  # noqa: BLE001 -- find which override is bad: each on its own
        bad = []
        for o in extra:
            try:
                _hydra_compose([*base, o])
            except Exception as e1:  # noqa: BLE001
                bad.append(f"{head}{o}: {explain(e1, o, keys)}")
        return None, bad or [f"{whole}: {explain(e, None, keys)}"]


def plan_in_task(overrides: Sequence[str], cwd: str, where: Optional[str] = None) -> tuple:
    """A sub-run's config inside the running task (a ladder rung): compose `overrides`, apply
    their `from=`, validate with them as the user's keys (not the parent command's). Returns
    (config, lineage); a ConfigError's problems each start with `where: `."""
    from runner.config import validate
    from runner.errors import ConfigError
    from runner.lineage import apply

    head = f"{where}: " if where else ""
    try:
        cfg = _hydra_compose(overrides)
    except Exception as e:  # noqa: BLE001 -- said in our words, naming the sub-run
        raise ConfigError(f"{head}{compose_problem(e, None, [])}") from e
    try:
        cfg, lineage = apply(cfg, list(overrides), cwd)
        validate(cfg, cwd, user_overrides=list(overrides))
    except ConfigError as e:
        raise ConfigError([f"{head}{x}" for x in e.problems]) from e
    return cfg, lineage


def check(cfg, cwd: str, overrides: Sequence[str]) -> None:
    """Validate a sub-run's config with `overrides` as the keys its user set (a seed rerun's
    seed=, a rung's changes), not the parent command's."""
    from runner.config import validate

    validate(cfg, cwd, user_overrides=[str(o) for o in overrides])


def trained_config(run_dir: Path):
    """A finished run's config (saved in its checkpoint) on the schema, ready to train again:
    no from=, no Hydra node, no warm start or resume of its own."""
    from omegaconf import OmegaConf

    from runner.checkpoint import best_checkpoint, load_checkpoint
    from runner.config import schema

    ck = best_checkpoint(Path(run_dir), required=True)
    raw = OmegaConf.to_container(OmegaConf.create(load_checkpoint(ck)["config"]))
    for key in ("from", "hydra"):
        raw.pop(key, None)
    raw.update({"init_from": None, "resume": False})
    return OmegaConf.merge(schema(str((raw.get("stage") or {}).get("name"))), raw)


def task_groups() -> List[str]:
    """The config groups of the running task (model, data, ...; not Hydra's own)."""
    from hydra.core.hydra_config import HydraConfig

    return [g for g in HydraConfig.get().runtime.choices if not g.startswith("hydra")]


# ----------------------------------------------------------------------------- run
# Hydra's singletons that belong to one run (hydra.core.singleton.Singleton subclasses)
PER_RUN_SINGLETONS = ("GlobalHydra", "HydraConfig", "JobRuntime")


@contextlib.contextmanager
def isolated_hydra():
    """Hydra's singletons (GlobalHydra, HydraConfig, the config store), OmegaConf's resolvers,
    the logging set-up and the two variables the CLI sets, as they were before: a run in this
    process (a recipe's stage, a notebook's `runner.run`) leaves its caller's state alone."""
    from hydra.core.singleton import Singleton
    from omegaconf.basecontainer import BaseContainer

    # by reference, not Hydra's deep-copying get_state (~0.4 s a run): the config store and
    # the plugins are shared; the per-run singletons (GlobalHydra, HydraConfig, JobRuntime)
    # are taken out, so the run makes its own and the caller's come back untouched
    saved_instances = dict(Singleton._instances)
    saved_resolvers = dict(BaseContainer._resolvers)
    env = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "RUNNER_SETS_HYDRA_FULL_ERROR")}
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = {id(lg): (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}
    for cls in list(Singleton._instances):
        if cls.__name__ in PER_RUN_SINGLETONS:
            del Singleton._instances[cls]
    try:
        yield
    finally:
        Singleton._instances.clear()
        Singleton._instances.update(saved_instances)
        BaseContainer._resolvers = saved_resolvers
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        current = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for lg in current:
            before = saved.get(id(lg))
            for h in list(lg.handlers):
                if before is None or h not in before[1]:
                    lg.removeHandler(h)
                    if isinstance(h, logging.FileHandler):
                        h.close()
            if before is not None:
                _, handlers, level, propagate, disabled = before
                for h in handlers:
                    if h not in lg.handlers:
                        lg.addHandler(h)
                lg.setLevel(level)
                lg.propagate, lg.disabled = propagate, disabled


@contextlib.contextmanager
def _in_dir(path: Optional[str], importable: bool = False):
    """Work in `path`; `importable`: its modules import too (a user's `_target_: mymod.fn`),
    as `python -m runner` run there would find them."""
    old = os.getcwd()
    if path and Path(path).resolve() != Path(old).resolve():
        os.chdir(path)
    added = importable and path is not None and str(path) not in sys.path
    if added:
        sys.path.insert(0, str(path))
    try:
        yield
    finally:
        if added and str(path) in sys.path:
            sys.path.remove(str(path))
        if os.getcwd() != old:
            os.chdir(old)


class _Errors(logging.Handler):
    """The ERROR records a run logs: why it failed, when it could not write error.json."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: List[str] = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 -- a bad log call never breaks the run
            pass


HOWS = ("in-process", "process")


@dataclass
class Outcome:
    """What running a plan gave: its exit code, its directory and what it printed (when
    captured or run as a child)."""

    code: int
    run_dir: Optional[Path]
    output: str = ""
    error: Optional[str] = None


def run_argv(
    argv: Sequence[str],
    *,
    how: str = "in-process",
    cwd: Optional[Union[str, Path]] = None,
    capture: bool = False,
    env: Optional[Dict[str, str]] = None,
    echo: bool = True,
) -> Outcome:
    """`python -m runner ARGV`: in this process, or as a child process; its exit code, what it
    printed (capture=True, or a child) and the last error it logged."""
    if how not in HOWS:
        from runner.errors import ConfigError

        raise ConfigError(f"how={how!r}: one of {', '.join(HOWS)}")
    cwd = str(cwd or os.getcwd())
    if how == "process":
        return _child(list(argv), cwd, env, echo)
    out = io.StringIO()
    errors = _Errors()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.ExitStack() as stack:
            if capture:
                stack.enter_context(contextlib.redirect_stdout(out))
                stack.enter_context(contextlib.redirect_stderr(out))
            stack.enter_context(_in_dir(cwd, importable=True))
            stack.enter_context(isolated_hydra())
            # added after Hydra configures logging (it replaces the root's handlers)
            stack.enter_context(_collect(errors))
            from runner.__main__ import main

            code = main(list(argv))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(int(code), None, out.getvalue(), errors.lines[-1] if errors.lines else None)


@contextlib.contextmanager
def _collect(handler: logging.Handler):
    lg = logging.getLogger("runner")
    lg.addHandler(handler)
    try:
        yield
    finally:
        lg.removeHandler(handler)


def _child(argv: List[str], cwd: str, env: Optional[Dict[str, str]], echo: bool) -> Outcome:
    """A child `python -m runner ARGV`, its output passed through live (echo) and kept."""
    import subprocess

    e = dict(os.environ)
    e.pop("HYDRA_FULL_ERROR", None)
    e.pop("RUNNER_SETS_HYDRA_FULL_ERROR", None)
    here = str(Path(__file__).resolve().parents[1])
    e["PYTHONPATH"] = os.pathsep.join([here, cwd, e.get("PYTHONPATH", "")])
    e.update(env or {})
    lines: List[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *argv],
        cwd=cwd,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            lines.append(line.rstrip("\n"))
    finally:
        code = proc.wait()
    return Outcome(code, None, "\n".join(lines), error_line(lines[-60:]))


def error_line(tail: Sequence[str]) -> Optional[str]:
    """The reason a child run failed, from the end of its output."""
    # Hydra's "Set the environment variable HYDRA_FULL_ERROR=1 ..." footer is never the reason
    lines = [ln.strip() for ln in tail if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "exception" in low:
            return ln[-500:]
    return lines[-1][-500:] if lines else None


def run(
    p: Union[Plan, Sequence[str]],
    run_dir: Optional[Union[str, Path]] = None,
    *,
    how: str = "in-process",
    capture: bool = False,
    echo: bool = True,
) -> Outcome:
    """Run a plan (or a command line) in `run_dir` (Hydra's default folder when None). A run
    that fails without saying why in its directory gets `error.json` from what it logged."""
    if isinstance(p, Plan):
        argv, cwd = p.argv(run_dir), p.cwd
    else:
        argv, cwd = list(p), os.getcwd()
        if run_dir is not None:
            argv.append(f"hydra.run.dir={run_dir}")
    out = run_argv(argv, how=how, cwd=cwd, capture=capture, echo=echo)
    d = Path(cwd, str(run_dir)).resolve() if run_dir is not None else None
    out.run_dir = d
    if out.code != 0 and d is not None:
        record_failure(d, out.code, out.error)
    return out


def record_failure(run_dir: Path, code: int, error: Optional[str]) -> None:
    """error.json for a run that failed without one (refused before it began, or a child that
    died): the reason it logged, so every failed run in a recipe or sweep says why."""
    from runner.aggregate import ERROR_FILE, one_line
    from runner.output import read_json

    if (run_dir / ERROR_FILE).is_file() or code in (0, None):
        return
    s = read_json(run_dir / "summary.json")
    if isinstance(s, dict) and code == 1:  # finished with a failed check: no error
        return
    if code == 1 and (run_dir / "study.json").is_file():
        return  # a study whose trials' checks failed: its table says which
    from runner.output import RunDir

    message = (error or f"exited {code}").removeprefix("config error: ")
    RunDir(run_dir).write_json(
        ERROR_FILE,
        {
            "status": "failed",
            "error": one_line(message),
            "message": message,
            "type": "ConfigError" if code == 2 else "exit",
            "exit_code": code,
        },
    )


# ----------------------------------------------------------------------------- read
def summary(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """A run directory's summary.json as a dict ({} when it has none, or not a dict)."""
    from runner.output import read_summary

    # validated (runner/output.py): a malformed summary is a ConfigError naming the file
    return read_summary(Path(run_dir)) or {}


@dataclass
class RunRecord:
    """What a run directory says about its run (RunRecord.read)."""

    path: Path
    stage: Optional[str]
    status: str  # finished, stopped_early, nonfinite, pruned, failed, incomplete
    exit_code: Optional[int]
    summary: Dict[str, Any]
    checks: List[Dict[str, Any]]
    error: Optional[str]
    lineage: Optional[Dict[str, Any]] = None
    error_type: Optional[str] = None  # error.json's type: ConfigError, Interrupted, exit, ...

    @classmethod
    def read(cls, run_dir: Union[str, Path]) -> "RunRecord":
        from runner.aggregate import ERROR_FILE, one_line
        from runner.output import read_checks, read_json, read_lineage

        d = Path(run_dir)
        s = summary(d)  # a malformed summary: a ConfigError naming the file, never "finished"
        checks = read_checks(d)
        err = read_json(d / ERROR_FILE)
        err = err if isinstance(err, dict) else None
        current = err is not None and (  # a later resume may have finished the run
            not s or (d / ERROR_FILE).stat().st_mtime >= (d / "summary.json").stat().st_mtime
        )
        failed = [c["name"] for c in checks if c.get("status") == "fail"]
        if current:
            status = "failed"
            error = err.get("error") or "failed (no message)"
            code = err.get("exit_code") if isinstance(err.get("exit_code"), int) else 1
        elif s:
            status = str(s.get("status") or "finished")
            error = one_line(s["error"]) if s.get("error") else None
            code = s.get("exit_code")
            if not isinstance(code, int):  # written before summaries held it: the same rule
                strict = s.get("strict", _config_value(d, "checks.strict"))
                code = exit_code(failed or s.get("checks_failed") or [], strict, status)
        elif (d / "study.json").is_file():
            status, error, code = "finished", None, None
        else:  # killed, or still running: the last error it logged, if any
            status, error, code = "incomplete", _last_log_error(d), None
        return cls(
            path=d,
            stage=s.get("stage") or _stage_of(d),
            status=status,
            exit_code=code,
            summary=s,
            checks=checks,
            error=error,
            lineage=read_lineage(d),
            error_type=(err or {}).get("type") if current else None,
        )

    @property
    def accuracy(self) -> Optional[float]:
        """The headline: the stage's own (best val-loss epoch for a training run)."""
        if self.status == "failed":
            return None
        if "_accuracy" not in self.__dict__:
            self.__dict__["_accuracy"] = headline_accuracy(self.path, self.stage)
        return self.__dict__["_accuracy"]

    @property
    def score(self) -> Optional[float]:
        """What validation selects this run by (the run's `metric`, selection_value): the
        headline accuracy for metric=accuracy, else the best epoch's figure of the metric
        (higher is better: val_loss negated). Never a test figure."""
        if self.status == "failed":
            return None
        metric = str(self.summary.get("metric") or "accuracy")
        if metric == "accuracy":
            return self.accuracy
        return selection_value(self.summary, metric)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed_checks(self) -> List[str]:
        return [c["name"] for c in self.checks if c.get("status") == "fail"] or list(
            self.summary.get("checks_failed") or []
        )


def _last_log_error(path: Path) -> Optional[str]:
    """The last ERROR line of a run's log (a run killed before it wrote error.json)."""
    from runner.aggregate import one_line

    for log_file in sorted(path.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        errors = [ln for ln in lines if "[ERROR]" in ln]
        if errors:
            return one_line(errors[-1].split("[ERROR]", 1)[1])
    return None


def _config_value(d: Path, key: str) -> Any:
    """A key of the run's saved config (config.yaml or .hydra/config.yaml); None if absent."""
    for p in (d / "config.yaml", d / ".hydra" / "config.yaml"):
        if p.is_file():
            try:
                import yaml

                node: Any = yaml.safe_load(p.read_text()) or {}
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                return node
            except Exception:  # noqa: BLE001 -- unreadable: unknown
                continue
    return None


def exit_code(failed_checks: Sequence[str], strict: Any, status: str = "finished") -> int:
    """The one exit-code rule of a finished run (runner/stages/finish.py uses it too): 1 when
    it stopped on a NaN/Inf loss, or a check failed and checks.strict is on; else 0."""
    if status == "nonfinite":
        return 1
    return 1 if failed_checks and strict is not False else 0


# `metric` -> the summary.json field of a run's best epoch it reads (runner/stages/common.py
# summary_of); the test split's figures are never among them
SELECTION_FIELDS = {
    "accuracy": "best_val_acc",
    "balanced_accuracy": "best_val_balanced_acc",
    "macro_f1": "best_val_macro_f1",
    "val_loss": "best_val_loss",
}


def selection_value(summary: Dict[str, Any], metric: Optional[str] = None) -> Optional[float]:
    """The one number validation compares runs by (the ladder's rungs, the study's trials,
    squeeze's candidates and seed reruns, the recipe's stages): the best epoch's figure of
    `metric` (default: the summary's own `metric`, else accuracy), higher is better (val_loss
    negated); None when the run has none (it diverged, or never evaluated)."""
    metric = str(metric or summary.get("metric") or "accuracy")
    v = summary.get(SELECTION_FIELDS.get(metric, "best_val_acc"))
    if v is None and metric == "accuracy":
        v = summary.get("val_acc")
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
        return None
    return -float(v) if metric == "val_loss" else float(v)


def headline_accuracy(run_dir: Path, stage: Optional[str]) -> Optional[float]:
    """A run's accuracy, as its stage defines it (runner/stages/<stage>.py `headline`): the
    best val-loss epoch's for a training run, the ladder's, the study's best trial's, the
    adopted model's; summary.json's val_acc for a stage without one."""
    from runner.output import read_json
    from runner.stages import STAGES, get_stage

    if stage in STAGES:
        try:
            acc = get_stage(stage).headline(Path(run_dir), []).val_acc
        except Exception:  # noqa: BLE001 -- a half-written run: no headline
            acc = None
    else:
        acc = (read_json(Path(run_dir) / "summary.json") or {}).get("val_acc")
    return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def _stage_of(d: Path) -> Optional[str]:
    name = _config_value(d, "stage.name")
    if not name and (d / "multirun.yaml").is_file():
        try:
            import yaml

            name = (
                (yaml.safe_load((d / "multirun.yaml").read_text()) or {}).get("stage") or {}
            ).get("name")
        except Exception:  # noqa: BLE001 -- unreadable: unknown stage
            name = None
    return str(name) if name else None


# ----------------------------------------------------------------------------- sweeps
# the sweeps a `python -m runner -m` call finished (runner/aggregate.py SweepSummary reports
# each): one list per call in progress, so a sweep inside a recipe's stage, or a notebook's
# second sweep, is counted by its own call only
_sweep_calls: List[List[Path]] = []


@contextlib.contextmanager
def sweeps_finished():
    """The sweep directories finished while this is open (the innermost call's)."""
    found: List[Path] = []
    _sweep_calls.append(found)
    try:
        yield found
    finally:
        _sweep_calls.remove(found)


def sweep_finished(sweep_dir: Union[str, Path]) -> None:
    if _sweep_calls:
        _sweep_calls[-1].append(Path(sweep_dir))


def sweep_exit_code(sweep_dir: Union[str, Path]) -> int:
    """A finished sweep's exit code, from its sweep.json (1 when it has none: the summary
    could not be written, so the sweep cannot say all went well)."""
    from runner.aggregate import SWEEP_FILE
    from runner.output import read_json

    s = read_json(Path(sweep_dir) / SWEEP_FILE)
    code = s.get("exit_code") if isinstance(s, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
