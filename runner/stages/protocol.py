"""The stage protocol: what every stage module provides and what it hands back.

A stage module (runner/stages/<name>.py, listed once in runner/stages/__init__.py) provides:

- `Params`: a dataclass, the type of `stage.params` (registered in the config schema, so a
  typo fails at compose time). A stage whose YAML builds on another stage's subclasses that
  stage's Params (the YAML inherits its values); `NoParams` for none.
- `run(cfg, ctx) -> StageResult`: verdicts, summary fields, report sections and files as
  data. It writes nothing itself: `runner.stages.finish.finish` writes the run directory,
  renders the report and decides the exit code.
- `outcome(run_dir) -> Outcome`: what `from=<a run of this stage>` starts from.
- `headline(run_dir, own) -> Headline`: its val accuracy and what it changed (`own`: its
  per-stage overrides in a recipe), for the
  recipe's table.
- optional flags, read through `runner.stages.stage_flag` (False when absent):
  `TRAINS` (its outcome is a trained model a later stage can start from), `FROM_PREVIOUS`
  (in a recipe it starts from the previous training stage's outcome), `WARM_START` (from=
  also loads the source's weights), `OWN_FROM` (it reads from= itself), `SWEEP` (it runs as
  a Hydra multirun), `PASSES_OVERRIDES` (it hands its command on to other stages);
- optional recipe hooks: `recipe_args(args, done, start)` (arguments it adds in a recipe)
  and `recipe_problem(before, args, start)` (why it cannot run where the recipe puts it).

Light to import (no torch): the CLI registers every stage's Params before composing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger("runner")


@dataclass
class NoParams:
    """A stage without settings of its own (and the base of every stage's Params)."""


def keyword_fields(cls, name: str, **fields_: tuple) -> type:
    """A dataclass `cls` plus fields whose names are Python keywords (name=(type, default)):
    `from=` and squeeze's `stage.params.from` are public keys, and `from` cannot be written as
    a dataclass field. Such a class has no generated __init__/__repr__/__eq__ (they would not
    compile); OmegaConf reads its fields, which is all the schema needs. `name`: the module
    attribute the result is bound to, so that pickle finds it by reference (a config pickled
    to a launcher's worker and back must not rebuild, and overwrite, the class)."""
    import dataclasses

    ns = {
        k: v
        for k, v in cls.__dict__.items()
        if k not in ("__dict__", "__weakref__", "__dataclass_fields__", "__dataclass_params__")
    }
    own = ns.get("__annotations__", {})
    for f in dataclasses.fields(cls):  # this class's fields again, defaults and factories kept
        if f.name in own:
            ns[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory)
    annotations = dict(own)
    for key, (type_, default) in fields_.items():
        annotations[key] = type_
        ns[key] = default
    ns["__annotations__"] = annotations
    ns["__qualname__"] = name
    new = type(name, cls.__bases__, ns)
    return dataclasses.dataclass(init=False, repr=False, eq=False)(new)


@dataclass
class Context:
    """Where a stage runs: its run directory and the user's working directory."""

    run: Any  # runner.output.RunDir
    original_cwd: str
    overrides: List[str] = field(default_factory=list)
    # from=<run dir>: where the config came from (runner/lineage.py), else None
    lineage: Optional[Dict[str, Any]] = None


@dataclass
class Rows:
    """A CSV file's rows; `columns` first (the header of an empty table), then any others."""

    rows: List[Dict[str, Any]]
    columns: Optional[List[str]] = None


@dataclass
class StageResult:
    """What a stage decided and measured, as data; `finish` writes and renders it."""

    verdicts: List[Any]  # runner.checks.Verdict, in the order they ran
    summary: Dict[str, Any]  # summary.json (stage, val_acc, ... and the stage's own fields)
    # report sections after the checks: runner.report.Section with data blocks
    sections: List[Any] = field(default_factory=list)
    # files beside summary.json: name -> Rows or a list of rows (.csv), an object (.json) or
    # text (.yaml, ...)
    files: Dict[str, Any] = field(default_factory=dict)
    # per-epoch rows of the trained run (the curves), when it trained
    history: List[Dict[str, Any]] = field(default_factory=list)
    title: Optional[str] = None
    # a dashed line on the curves there (where a continued run picked up)
    mark_epoch: Optional[float] = None
    # the exit code whatever the checks say (a NaN/Inf loss: 1); None: the checks decide
    exit_code: Optional[int] = None
    # metrics.csv rows when the stage's own training did not write them (a ladder's best rung)
    metrics: Optional[List[Dict[str, Any]]] = None
    # the config the report shows when it is not the stage's (a ladder's kept changes)
    config: Any = None


@dataclass
class Outcome:
    """What `from=<dir>` points at: the config a run ended with and its best weights."""

    source: Path
    config: Dict[str, Any]
    config_file: Path
    stage: str
    weights: Optional[Path]
    note: str = ""
    # the run directory that holds the outcome (a ladder's best rung, a study's best trial)
    run: Optional[Path] = None
    # the loadable final model when it is not `weights` (squeeze's adopted ensemble:
    # runner/ensemble.py); `weights` stays what a training stage can start from
    model: Optional[Path] = None


@dataclass
class Headline:
    """A stage's row in the recipe's table."""

    val_acc: Optional[float]
    change: str  # what it changed relative to the stage before it, in one line


def run_check(checks_cfg: Any, name: str, fn: Callable[[Any], Any]) -> Any:
    """The verdict of check `name`: `fn(settings)` timed, or a skip when
    checks.<name>.enabled=false. `settings` is the check's node under `checks` (registry)."""
    from runner.checks.registry import disabled, settings

    s = settings(checks_cfg, name)
    if not s.enabled:
        log.info("check: %s (off: checks.%s.enabled=false)", name, name.replace(".", "_"))
        return disabled(name)
    t0 = time.perf_counter()
    v = fn(s)
    if v.seconds is None:
        v.seconds = time.perf_counter() - t0
    return v
