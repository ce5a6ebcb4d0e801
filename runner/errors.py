"""Project errors. The CLI maps each to an exit code (DESIGN.md: 2 = bad config or input)."""

from __future__ import annotations

from typing import Iterable, Optional, Union


class RunnerError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(RunnerError):
    """Bad config or bad input, found before training. Holds every problem found at once."""

    exit_code = 2

    def __init__(self, problems: Union[str, Iterable[str]]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} problems:\n" + "\n".join(f"  - {x}" for x in self.problems)


class RunDirInUse(ConfigError):
    """Another process owns the run directory (runner/output.py lock_run_dir): refused before
    anything is written there (exit 2)."""


class UnreadableFiles(RunnerError):
    """data.on_unreadable=fail: a file of the data could not be read while training; the run
    stops naming it instead of leaving it out (bad input: exit 2)."""

    exit_code = 2

    def __init__(self, items):
        self.files = {str(it.name): str(it.error) for it in items}
        listed = "; ".join(f"{n} ({e})" for n, e in self.files.items())
        super().__init__(
            f"data.on_unreadable=fail: {len(self.files)} unreadable file(s): {listed}. Fix or "
            "remove them (python -m runner stage=inspect lists every one: data.corrupt), or set "
            "data.on_unreadable=skip to leave them out of the epoch"
        )


class NonFiniteLoss(RunnerError):
    """Raised by the loop when the loss or a gradient is NaN/Inf; names where it happened."""

    exit_code = 1

    def __init__(
        self,
        epoch: int,
        step: int,
        what: str = "loss",
        value: float = float("nan"),
        found_at: Optional[int] = None,
    ):
        self.epoch, self.step, self.what, self.value = epoch, step, what, value
        self.found_at = found_at  # the step whose check found it (the loop checks every few steps)
        where = (
            f" (found by the check after step {found_at})" if found_at and found_at != step else ""
        )
        super().__init__(
            f"non-finite {what} ({value}) at epoch {epoch}, step {step}{where}: training stopped "
            "before any checkpoint of it; earlier checkpoints are kept. Common causes: optim.lr "
            "too high, a log/div of zero in the model or loss, unscaled inputs."
        )


class Interrupted(RunnerError):
    """SIGINT/SIGTERM: a checkpoint of the exact position was saved; exit 128 + signal."""

    def __init__(self, signum: int, run_dir, epoch: int, step: int):
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted by signal {signum} in epoch {epoch + 1} after step {step}; checkpoint "
            f"saved. Continue with: python -m runner resume={run_dir}"
        )


class StageInterrupted(RunnerError):
    """A composite stage's sub-run stopped on a signal (it saved its checkpoint): the composite
    stops too, with the sub-run's exit code (128 + signal)."""

    def __init__(self, code: int, stage: str, run_dir):
        self.exit_code = code
        super().__init__(
            f"stage {stage} was interrupted (exit {code}); its checkpoint is saved: continue "
            f"it with python -m runner resume={run_dir}"
        )


class RunFileError(RunnerError, OSError):
    """A run file could not be written: the disk is full, a file-size limit, a read-only file
    system, no permission, the run directory gone (exit 3). The message names the file, the
    condition and what survived; nothing is truncated (every write is temp file + rename).

    An OSError too, so code that tolerates a failed write (e.g. recording error.json on the
    same full disk) still does."""

    exit_code = 3

    def __init__(self, path, err: OSError, survived: str):
        self.path, self.cause, self.survived = str(path), err, survived
        self.condition = io_condition(err)
        super().__init__(f"could not write {path}: {self.condition}. {survived}")
        self.errno = err.errno


# errno -> what the user reads (and can act on); anything else is named by its errno name
IO_CONDITIONS = {
    "ENOSPC": "no space left on the device (ENOSPC): free space",
    "EDQUOT": "the disk quota is exceeded (EDQUOT): free space or raise the quota",
    "EFBIG": "the file is larger than allowed (EFBIG: `ulimit -f` or the file system's limit): "
    "raise the limit",
    "EROFS": "the file system is read-only (EROFS): write the run elsewhere",
    "EACCES": "permission denied (EACCES): make the directory writable",
    "EPERM": "operation not permitted (EPERM): make the directory writable",
    "ENOENT": "the run directory no longer exists (ENOENT: removed or unmounted during the run)",
    "EIO": "an I/O error of the device (EIO)",
}


def io_condition(err: OSError) -> str:
    import errno as _errno

    name = _errno.errorcode.get(err.errno or 0, "")
    if name in IO_CONDITIONS:
        return IO_CONDITIONS[name]
    return f"{err.strerror or err} ({name or 'no errno'})"
