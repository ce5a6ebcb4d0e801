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
