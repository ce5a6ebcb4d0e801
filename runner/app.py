"""The Hydra task: validate the composed config, pick the stage, map errors to exit codes."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError, RunDirInUse, RunnerError

log = logging.getLogger("runner")


def run(cfg: DictConfig) -> int:
    """Run one job (a single run, or one job of a sweep). Returns the exit code."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    original_cwd = hc.runtime.cwd
    overrides = list(hc.overrides.task)
    # a failing run records why (error.json); in a sweep it returns its code instead of
    # raising: the other jobs and the sweep summary (runner/aggregate.py) still happen
    from hydra.types import RunMode

    sweep = hc.mode == RunMode.MULTIRUN
    try:
        with _owning(run_dir):
            return _run(cfg, run_dir, original_cwd, overrides)
    except RunDirInUse as e:  # another process's directory: nothing is written or removed there
        log.error("config error: %s", e)
        return e.exit_code
    except ConfigError as e:
        log.error("config error: %s", e)
        if sweep:
            _record_error(run_dir, e, e.exit_code, "config error: ")
        else:
            _drop_if_empty(run_dir)
        return e.exit_code
    except RunnerError as e:
        log.error("%s", e)
        _record_error(run_dir, e, e.exit_code)
        return e.exit_code
    except Exception as e:
        # every failed run says why in its directory (error.json: runner/jobs.py RunRecord)
        _record_error(run_dir, e, 1)
        if not sweep:
            raise
        log.exception("job failed: %s: %s", type(e).__name__, e)
        return 1


@contextlib.contextmanager
def _owning(run_dir: Path):
    """This process owns the run directory while it runs (rank 0: the one that writes it)."""
    from runner.distributed import from_env
    from runner.output import owned

    if not from_env().main:
        yield
        return
    with owned(run_dir):
        yield


def _drop_if_empty(run_dir: Path) -> None:
    """A run refused before it began leaves no folder behind: remove what Hydra and this app
    created there (.hydra/, the log, from='s lineage.json and config.yaml) when nothing else is
    in it. A folder holding anything more (an interrupted run being resumed: checkpoints/, a
    finished one: summary.json, a user's files) is left exactly as it was."""
    from runner.output import LOCK_FILE

    ours = {".hydra", "lineage.json", "config.yaml", LOCK_FILE}
    if not run_dir.is_dir() or any(
        p.name not in ours and p.suffix != ".log" for p in run_dir.iterdir()
    ):
        return
    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in list(getattr(lg, "handlers", [])):  # the log file: no handler writes there again
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir:
                lg.removeHandler(h)
                h.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()  # outputs/<date>/ when this was its only run
    except OSError:
        pass


def _record_error(run_dir: Path, e: BaseException, code: int, prefix: str = "") -> None:
    """error.json (rank 0 only under DDP); a folder that cannot take it never hides the error."""
    from runner.aggregate import write_job_error
    from runner.distributed import from_env

    if not from_env().main or not run_dir.is_dir():  # a removed directory is not made again
        return
    try:
        write_job_error(run_dir, e, code, prefix)
    except OSError as oe:
        log.warning("could not record the error in %s: %s", run_dir, oe)


def _run(cfg, run_dir: Path, original_cwd: str, overrides) -> int:
    from runner.config import validate
    from runner.distributed import from_env
    from runner.lineage import apply
    from runner.output import RunDir
    from runner.stages import get_stage
    from runner.stages.protocol import Context

    cfg, lineage = apply(cfg, overrides, original_cwd)  # from=<run dir>
    validate(cfg, original_cwd)
    run = RunDir(run_dir, enabled=from_env().main)  # DDP: only rank 0 writes
    resuming = cfg.resume not in (False, None, "false", "False")
    if run.finished() and not resuming:
        raise ConfigError(
            f"{run_dir} already holds a finished run (summary.json); refusing to "
            "overwrite it: choose another hydra.run.dir"
        )
    if run.finished() and resuming:
        # an earlier finish of this run (e.g. stopped early or NaN): keep it beside the new one
        shutil.copy2(run.path / "summary.json", run.path / "summary.previous.json")
    log.info("stage %s -> %s", cfg.stage.name, run_dir)
    ctx = Context(
        run=run,
        original_cwd=original_cwd,
        overrides=overrides,
        lineage=lineage.as_dict() if lineage else None,
    )
    if lineage is not None:  # .hydra/config.yaml is the composition before from=
        run.write_json("lineage.json", ctx.lineage)
        run.write_text("config.yaml", OmegaConf.to_yaml(cfg))
    from runner.stages.finish import finish

    return finish(cfg, ctx, get_stage(cfg.stage.name).run(cfg, ctx))
