"""`python -m runner [overrides]`: compose conf/ with Hydra and run the selected stage.

Exit codes (DESIGN.md): 0 finished and no check failed; 1 a check failed (or NaN loss);
2 bad config or bad input, before training; 3 a run file could not be written (disk full,
size limit, read-only: runner/errors.py RunFileError); 128 + N stopped by signal N.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional


def conf_dir() -> str:
    """The packaged configs: runner/conf in an installed wheel (pyproject.toml maps the repo's
    top-level conf/ there at build time), else the repo's conf/ (a source checkout or an
    editable install, where the mapped folder is not copied). A file path, not pkg://: Hydra
    reads it the same way in both cases, and `--config-dir` adds experiment repos in front."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return str(packaged if (packaged / "config.yaml").is_file() else here.parent / "conf")


CONF_DIR = conf_dir()


def _own(target: Path, held: Optional[List[Path]]) -> None:
    """Lock the run directory this command writes before Hydra writes anything there (its
    .hydra/ record, its log): a second process on a running run changes none of its files.
    Rank 0 only under torchrun (the other ranks write nothing)."""
    if held is None or int(os.environ.get("RANK", "0")) != 0:
        return
    from runner.errors import ConfigError
    from runner.output import lock_run_dir

    made = not target.exists()
    try:
        lock_run_dir(target)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    held.append(target)
    if made:
        _MADE.add(str(target.resolve()))


_MADE: set = set()  # run directories _own created (removed again when nothing ran in them)


def _release(held: List[Path]) -> None:
    from runner.output import LOCK_FILE, unlock_run_dir

    for d in reversed(held):
        unlock_run_dir(d)
        key = str(d.resolve())
        if key in _MADE:
            _MADE.discard(key)
            try:  # refused before Hydra began: only the lock file is there
                if [p.name for p in d.iterdir()] == [LOCK_FILE]:
                    (d / LOCK_FILE).unlink()
                    d.rmdir()
            except OSError:
                pass


def _preprocess(argv: List[str], held: Optional[List[Path]] = None) -> List[str]:
    """`+from=<run dir>` (the old spelling) is `from=` (runner/lineage.py reads it in the task).

    `resume=<interrupted run dir>` continues *in* that directory: point Hydra's run dir at it.

    A finished run (it has summary.json) is never written to again: resuming from it
    (e.g. to train longer) starts a new run directory that loads its checkpoint.
    """
    out = list(argv)
    for a in argv:
        if a.startswith("hydra.run.dir=") and "-m" not in argv and "--multirun" not in argv:
            target = Path(a.split("=", 1)[1]).expanduser()
            if _finished(target):
                print(
                    f"config error: hydra.run.dir={target} already holds a finished run "
                    "(summary.json); refusing to overwrite it: choose another directory",
                    file=sys.stderr,
                )
                raise SystemExit(2)
        if a.startswith("resume=") and not any(x.startswith("hydra.run.dir=") for x in argv):
            value = a.split("=", 1)[1]
            if value.lower() in ("", "false", "none", "null"):
                continue
            target = None
            if value.lower() == "true":
                from runner.checkpoint import find_resume_checkpoint
                from runner.errors import ConfigError

                try:
                    ck = find_resume_checkpoint(True, Path.cwd() / "outputs")
                except ConfigError as e:
                    print(f"config error: {e}", file=sys.stderr)
                    raise SystemExit(2) from None
                target = ck.parent.parent
                out[out.index(a)] = f"resume={target}"
            else:
                p = Path(value).expanduser()
                target = p.parent.parent if p.is_file() and p.parent.name == "checkpoints" else p
            if target is not None and target.is_dir():
                done = _finished(target)  # a finished run continues in a new directory
                if not done:
                    _own(target, held)  # before its .hydra/ record is copied below
                    out.append(f"hydra.run.dir={target.resolve()}")
                hydra_dir = target / ".hydra"
                # the run's own overrides first: `resume=<dir>` alone continues the same
                # config; overrides typed again (or changed) come later and win
                out = _original_overrides(hydra_dir / "overrides.yaml", out) + out
                if not done and hydra_dir.is_dir():  # keep the interrupted run's own record
                    k = 1
                    while (target / f".hydra.before-resume-{k}").exists():
                        k += 1
                    shutil.copytree(hydra_dir, target / f".hydra.before-resume-{k}")
    # `from` is an ordinary key now; `+from=` (how it was spelled before) means the same
    return [a[1:] if a.startswith("+from=") else a for a in out]


def _finished(d: Path) -> bool:
    """d holds a finished run: a whole summary.json (a malformed one: exit 2 naming it)."""
    from runner.errors import ConfigError
    from runner.output import read_summary

    try:
        return read_summary(d) is not None
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _original_overrides(path: Path, argv: List[str]) -> List[str]:
    """A run's recorded overrides that the command does not set itself. They are the run
    directory's, not the user's: one that names code (a `_target_`, a Hydra search path or
    callback) is refused unless the command sets trust_run_configs=true (runner/targets.py)."""
    from runner.errors import ConfigError
    from runner.jobs import reapplied_on_resume
    from runner.output import read_overrides
    from runner.targets import names_code, trusts_run_configs

    try:
        again = reapplied_on_resume(read_overrides(path), argv)
        code = [o for o in again if names_code(o)]
        if code and not trusts_run_configs(argv):
            raise ConfigError(
                f"resume: {path} records {', '.join(code)}: code named only by a run "
                "directory is not run (run files are data); give the override yourself if you "
                "mean it, or add trust_run_configs=true to trust what this run directory names"
            )
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return again


def _distributed(argv: List[str]) -> List[str]:
    """Under torchrun every rank must use rank 0's run directory; only rank 0 writes it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "-m" in argv or "--multirun" in argv:
        return argv
    from datetime import datetime

    from runner.distributed import broadcast_str, init_process_group

    d = init_process_group()
    out = list(argv)
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        mine = "outputs/" + datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
        out.append(f"hydra.run.dir={broadcast_str(mine)}")
    if not d.main:
        out += ["hydra.output_subdir=null", "hydra.job_logging.root.level=WARNING"]
    return out


def unknown_key_message(override: str, err: BaseException) -> Optional[str]:
    """Our message for Hydra's "Could not override 'KEY'" (a typo in a key): the key, where it
    was looked up, the closest existing keys. Never the `+KEY` advice Hydra gives: the schema
    refuses new keys anyway, and a new key under stage.params is a typo of a stage setting."""
    import difflib

    from runner.config import moved_key_problem

    moved = moved_key_problem(override.split("=", 1)[0])
    if moved:
        return f"config error: {override}: {moved}"
    cause = err.__cause__
    key = getattr(cause, "full_key", None) or override
    node = getattr(cause, "parent_node", None)
    try:
        options = [str(k) for k in node.keys()] if node is not None else []
    except Exception:  # noqa: BLE001 -- a node without keys: no suggestion
        options = []
    leaf = str(getattr(cause, "key", None) or key.rsplit(".", 1)[-1])
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    near = difflib.get_close_matches(leaf, options, n=3, cutoff=0.6)
    where = f"{parent} has no key {leaf!r}" if parent else f"the config has no key {leaf!r}"
    if near:
        hint = (
            "; did you mean "
            + ", ".join(repr(f"{parent}.{n}" if parent else n) for n in near)
            + "?"
        )
    elif not options and parent.endswith("stage.params"):
        hint = "; this stage takes no stage.params (python -m runner --help lists the stages)"
    elif options:
        hint = f"; its keys: {', '.join(sorted(options)[:20])}" + (
            " ..." if len(options) > 20 else ""
        )
    else:
        hint = ""
    return f"config error: {override}: {where}{hint} (python -m runner --cfg job prints every key)"


def yaml_error_message(e: BaseException) -> str:
    """One line for a YAML syntax error in a config file: file:line:column, what the parser
    expected, and where the construct it was reading began."""
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark else "a config file"
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({ctx} that began at line {cmark.line + 1})" if ctx and cmark else ""
    return (
        f"config error: {where}: not valid YAML: {what}{started}; fix the file (a YAML "
        "checker shows the spot), e.g. a missing closing bracket or quote, or a tab indent"
    )


def _friendly_hydra_errors(task):
    """Run Hydra's main with our message for an override of a key that does not exist (see
    above) and exit 2 for any other composition error.

    Hydra prints and exits on its own unless HYDRA_FULL_ERROR is set, its documented switch to
    let the exception through; it is set here for this call only (a user's own setting keeps
    Hydra's full traceback), and other errors get Hydra's short form: the message, no stack."""
    import traceback

    from hydra.errors import ConfigCompositionException

    from runner.config import moved_key_in

    mark = "RUNNER_SETS_HYDRA_FULL_ERROR"  # ours, inherited by a subprocess: not the user's
    own = "HYDRA_FULL_ERROR" in os.environ and mark not in os.environ
    if not own:
        os.environ.update({"HYDRA_FULL_ERROR": "1", mark: "1"})
    try:
        return task()
    except ConfigCompositionException as e:
        if own:
            raise
        text = str(e)
        if text.startswith("Could not override '") and e.__cause__ is not None:
            override = text.split("'", 2)[1]
            line = text.split("+", 1)[1].strip() if "+" in text else override
            # ours is the whole story: no "HYDRA_FULL_ERROR=1" footer after it
            print(unknown_key_message(line, e), file=sys.stderr)
        elif moved_key_in(e):
            where = text.split(":", 1)[0] + ": " if text.startswith("In '") else ""
            print(f"config error: {where}{moved_key_in(e)}", file=sys.stderr)
        else:
            cause = f"\n{e.__cause__}" if e.__cause__ is not None else ""
            print(f"{text}{cause}", file=sys.stderr)
        raise SystemExit(1) from None  # a compose error: main() makes it exit 2
    except Exception as e:  # Hydra's short report of an error in the run
        if own:
            raise
        import yaml

        if isinstance(e, yaml.YAMLError):  # a config file (an experiment, an option) is no YAML
            print(yaml_error_message(e), file=sys.stderr)
            raise SystemExit(1) from None  # before the task: main() makes it exit 2
        print("".join(traceback.format_exception_only(type(e), e)).rstrip(), file=sys.stderr)
        print(
            "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    finally:
        if not own:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop(mark, None)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from runner.commands import COMMANDS, run_command  # light: no torch, no Hydra

    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    held: List[Path] = []
    try:
        return _main(argv, held)
    finally:
        _release(held)


def _main(argv: List[str], held: List[Path]) -> int:
    try:
        argv = _distributed(_preprocess(argv, held))
        if "-m" not in argv and "--multirun" not in argv:
            dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
            if dirs and "$" not in dirs[-1]:  # an interpolation: Hydra's to resolve (app.py locks)
                _own(Path(dirs[-1]).expanduser(), held)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2

    import hydra

    from runner.config import register_configs

    register_configs()
    from runner.help import register_resolvers

    register_resolvers()  # ${runner_stages:} in --help
    state = {"entered": False, "codes": []}

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def _task(cfg):
        state["entered"] = True
        from runner.app import run

        code = run(cfg)
        state["codes"].append(code)
        return code

    saved = sys.argv
    sys.argv = [saved[0] if saved else "runner"] + argv
    from runner import jobs

    try:
        with jobs.sweeps_finished() as sweeps:
            _friendly_hydra_errors(_task)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        # Hydra exits 1 on a compose error (typo, wrong type): that is bad config -> 2
        if code == 1 and not state["entered"]:
            return 2
        return code
    finally:
        sys.argv = saved
    # a sweep's own summary (sweep.json, runner/aggregate.py) knows the codes of jobs run in
    # other processes (joblib launcher), whose return values never come back here
    codes = [c for c in state["codes"] if isinstance(c, int)]
    codes += [jobs.sweep_exit_code(d) for d in sweeps]
    return max(codes, default=0)


def cli() -> int:
    """The command line (`python -m runner`, `recipe-runner`): main(), then an exit without
    a collection over every object left. Interpreter shutdown otherwise spends ~0.7 s (2 cores)
    collecting what timm and torch._dynamo imported; the recipe starts seven such processes.
    Everything the run writes is written and closed by then, and atexit handlers still run."""
    import gc

    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(cli())
