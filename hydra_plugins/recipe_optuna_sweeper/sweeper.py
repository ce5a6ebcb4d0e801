"""OptunaSweeper: an Optuna study as a Hydra multirun, on Optuna's ask-and-tell API.

The loop, per worker (one, or `n_jobs` threads each asking when free - no batches):
  mark stale trials failed -> stop when the budget is spent -> ask a trial -> launch it as one
  Hydra job (its directory is its trial number) -> score it -> tell the study.
A job's score is its summary.json figure (`metric`, recipe-runner's jobs) or, for any other
Hydra app, its task function's return value (the published hydra-optuna-sweeper's contract).
A recipe-runner job reports every epoch to the study itself (runner/tuning.py TrialReporter),
so pruning happens inside the job; other apps call runner.tuning.trial_reporter(). A NaN,
pruned or crashing trial is told as such and the sweep goes on (unless max_failure_rate).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: int | None,
        direction: Any,
        metric: Any,
        study_name: str | None,
        storage: str | None,
        study_dir: str | None,
        sampler: Any,
        pruner: Any,
        params: Any,
        warm_start: bool,
        heartbeat_interval: int,
        grace_period: int,
        retry: int,
        edge_fraction: float,
        search_space: Any = None,
        custom_search_space: str | None = None,
        max_failure_rate: float | None = None,
        experiment_sequence: str | None = None,
    ) -> None:
        def plain(x):
            return (
                OmegaConf.to_container(x, resolve=True)
                if isinstance(x, (DictConfig, ListConfig))
                else x
            )

        self.n_trials, self.n_jobs = n_trials, n_jobs
        direction, metric = plain(direction), plain(metric)
        # the published plugin also takes its Direction enum's names; a list: several objectives
        self.directions = [
            str(getattr(d, "name", d))
            for d in (direction if isinstance(direction, list) else [direction])
        ]
        self.direction = self.directions[0] if len(self.directions) == 1 else self.directions
        self.metric = metric
        self.study_name = None if study_name is None else str(study_name)
        self.storage, self.study_dir = storage, study_dir
        self.sampler, self.pruner, self.params = plain(sampler), plain(pruner), plain(params) or {}
        if isinstance(self.sampler, str):  # hydra.sweeper.sampler=tpe: the class's defaults
            self.sampler = {"name": self.sampler}
        self.search_space = plain(search_space) or {}
        self.custom_search_space = custom_search_space
        self.max_failure_rate = max_failure_rate
        self.experiment_sequence = experiment_sequence
        self.warm_start, self.retry, self.edge_fraction = warm_start, retry, edge_fraction
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.config: DictConfig | None = None
        self._lock = threading.Lock()
        self._warm: tuple[dict[str, Any], list[str]] | None = None
        self._grid: dict[str, list[Any]] | None = None
        self._custom = None
        self._storage = None
        self._runner_app = True  # an app that declares `tune` (set in sweep)
        self._exhausted = False
        self._interrupted = False
        self._finished_here, self._failed_here = 0, []  # for max_failure_rate
        self._too_many_failures: str | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> Any:
        from runner.errors import ConfigError

        try:
            return self._sweep(arguments)
        except ConfigError as e:
            # a bad sweep setting: one message and exit 2 (Hydra would print the whole stack of
            # anything raised here, and exit 1)
            print(f"config error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except Exception as e:
            from runner import tuning

            # the study's storage could not be written (a full disk, a size limit, a
            # read-only file system): one message naming it and exit 3, as for run files
            err = tuning.storage_write_error(e, getattr(self, "url", None))
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None

    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        from runner import tuning
        from runner.errors import ConfigError
        from runner.output import RunDir

        # recipe-runner's config declares `tune` (the trial's number, storage and study name);
        # any other Hydra app gets them as environment variables and is scored by its return
        self._runner_app = "tune" in self.config
        problems = []
        for step in (self._check_settings, lambda: self._search_space(arguments)):
            try:
                space = step()
            except ConfigError as e:
                problems += e.problems
        if problems:
            raise ConfigError(problems)
        if not space.distributions and not self._custom:
            raise ConfigError(
                "hydra.sweeper.params is empty: nothing to search. Give a search "
                "space, e.g. optim.lr='tag(log, interval(1e-4, 1e-1))' (docs/tune.md)"
            )
        if tuning.sampler_name(self.sampler, len(self.directions)) == "grid":
            self._grid = {k: tuning.grid_values(k, d) for k, d in space.distributions.items()}
            size = math.prod(len(v) for v in self._grid.values())
            if size < self.n_trials:
                log.info(
                    "tune: the grid has %d points: n_trials %d -> %d", size, self.n_trials, size
                )
                self.n_trials = size
        name = self.study_name
        if name is None and self._runner_app and isinstance(self.config.get("name"), str):
            name = str(self.config.name)  # the experiment's name: the same command resumes
        memory = self.storage is None  # the published plugin's default: nothing kept
        n_jobs = self._workers()
        study_dir = self._set_study_dir(None if memory else name)
        self._launcher_follows_study_dir()
        url = tuning.storage_url("memory" if memory else self.storage, study_dir, n_jobs)
        self.url = url
        self._check_composes(space)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._storage = tuning.open_storage(url)
        study = optuna.create_study(
            study_name=name,
            storage=self._storage,
            sampler=optuna.samplers.RandomSampler(),  # replaced for each trial (_sampler_for)
            directions=self.directions,
            load_if_exists=True,
        )
        self.study_name = study.study_name
        got = [d.name.lower() for d in study.directions]
        if got != self.directions:
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction!r} but study "
                f"{self.study_name!r} in {url} was created to {got if len(got) > 1 else got[0]}; "
                "use another study_name"
            )
        study.set_user_attr(tuning.ATTR_METRIC, self.metric)
        study.set_user_attr(tuning.ATTR_PRUNER, tuning.pruner_spec(self.pruner))
        before = len(study.get_trials(deepcopy=False))
        self._fail_stale(study)
        if self.warm_start and before == 0 and self._grid is None:
            self._warm = self._current_params(space)
        if memory and n_jobs > 1 and not self._in_process():
            log.warning(
                "tune: storage null keeps the study in this process's memory: the "
                "trials cannot report to it (no pruning)"
            )
        log.info(
            "tune: study %r in %s: %d trial(s) already, budget %d; %d worker(s); %s %s; %s",
            self.study_name,
            url or "memory",
            before,
            self.n_trials,
            n_jobs,
            self.direction,
            self._objective_label(),
            type(tuning.build_sampler(self.sampler, 0, len(self.directions), self._grid)).__name__,
        )
        if url:
            log.info("tune: dashboard: %s", tuning.dashboard_command(url))

        self.out = RunDir(study_dir)
        self.space = space
        results: list[Any] = []
        if n_jobs == 1:
            self._worker(study, results)
        else:
            with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="tune-worker") as pool:
                for f in [pool.submit(self._worker, study, results) for _ in range(n_jobs)]:
                    f.result()
        self._write_outputs(study, final=True)
        if self._too_many_failures:
            # the published plugin's max_failure_rate: the study stops with an error
            print(f"tune: {self._too_many_failures}", file=sys.stderr)
            raise SystemExit(1)
        if self._interrupted:
            log.warning(
                "tune: interrupted; run the same command again to resume study %r", self.study_name
            )
            return results
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            # every trial failed: the study has no result; say where to look, exit 1
            print(
                f"tune: no trial of study {self.study_name!r} completed ({url or 'memory'}); "
                f"see the trials' logs under {study_dir} and {study_dir / 'trials.csv'}",
                file=sys.stderr,
            )
            raise SystemExit(1)
        return results

    def _search_space(self, arguments: list[str]):
        """params (or the deprecated search_space) plus the command line's overrides."""
        from runner import tuning
        from runner.config import override_key

        params = self.params
        if self.search_space and params:
            log.warning(
                "tune: both hydra.sweeper.params and hydra.sweeper.search_space are set: "
                "params is the search space, search_space is ignored"
            )
        space = tuning.parse_search_space(params, arguments)
        if self.search_space and not params:
            log.warning(
                "tune: hydra.sweeper.search_space is deprecated (as in "
                "hydra-optuna-sweeper 1.2+); write it as hydra.sweeper.params"
            )
            given = {k: tuning.search_space_entry(k, v) for k, v in self.search_space.items()}
            fixed_keys = {override_key(f) for f in space.fixed}
            given = {k: v for k, v in given.items() if k not in fixed_keys}
            space.distributions = {**given, **space.distributions}
        return space

    def _objective_label(self) -> str:
        from runner import tuning

        metric = self.metric if self._runner_app else "value"
        return ", ".join(tuning.objective_names(metric, len(self.directions)))

    def _in_process(self) -> bool:
        return type(self.launcher).__name__ == "BasicLauncher"

    # ------------------------------------------------------------------------- one worker
    def _worker(self, study, results: list[Any]) -> None:
        while True:
            with self._lock:
                self._fail_stale(study)
                if (
                    self._exhausted
                    or self._interrupted
                    or self._too_many_failures
                    or self._budget_left(study) <= 0
                ):
                    return
                trial, overrides = self._ask(study)
            if trial is None:  # another worker took the budget's last slot: this one stops
                return
            results.append(self._run_trial(study, trial, overrides))

    def _sampler_for(self, number: int):
        """Trial `number`'s sampler (runner/tuning.py build_sampler: seeded by its number); the
        warm-start trial 0 takes the current config's values."""
        import optuna

        from runner import tuning

        sampler = tuning.build_sampler(self.sampler, number, len(self.directions), self._grid)
        if number == 0 and self._warm is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.PartialFixedSampler(self._warm[0], sampler)
        return sampler

    def _ask(self, study) -> tuple[Any, list[str]]:
        """The next trial and its job's overrides; (None, []) when it falls beyond the budget."""
        from runner import tuning
        from runner.errors import ConfigError

        trial = tuning.ask(study, self._sampler_for)
        if trial.number == 0 and self._warm is not None:
            self._log_warm(*self._warm)
        self._warm = None  # trial 0 is this process's first trial or another's: done either way
        if self._beyond_budget(study, trial):
            return None, []
        trial.set_user_attr("heartbeat", time.time())
        for key in ("reason", "epochs", "status"):  # a retry starts with its original's attributes
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        for k, d in self.space.distributions.items():
            tuning.suggest(trial, k, d)
        if self._custom is not None:
            fixed = dict(f.split("=", 1) for f in self.space.fixed)
            for k, v in fixed.items():  # as the published plugin: the hook can read them here
                trial.set_user_attr(k, v)
            try:
                self._custom(self.config, trial)
            except Exception as e:  # noqa: BLE001 -- the user's hook: name it and its error
                self._tell(study, trial, None, _state("FAIL"))
                raise ConfigError(
                    f"hydra.sweeper.custom_search_space={self.custom_search_space!r} raised "
                    f"{type(e).__name__}: {e}"
                ) from None
            overlap = sorted(set(trial.params) & set(fixed))
            if overlap:
                self._tell(study, trial, None, _state("FAIL"))
                raise ConfigError(
                    f"hydra.sweeper.custom_search_space suggested {overlap}, fixed by an override "
                    "(key=value): drop the override or the suggestion"
                )
        overrides = list(self.space.fixed) + [
            f"{k}={tuning.format_value(v)}" for k, v in trial.params.items()
        ]
        trial.set_user_attr("overrides", overrides)
        if self.url is None:  # in memory: nothing another process could report to
            return trial, overrides
        if self._runner_app:
            overrides += [
                f"tune.trial={trial.number}",
                f"tune.storage={tuning.format_value(self.url)}",
                f"tune.study_name={tuning.format_value(self.study_name)}",
            ]
        else:  # any other app: runner.tuning.trial_reporter() reads these
            overrides += [
                f"+hydra.job.env_set.{tuning.ENV_TRIAL}={trial.number}",
                f"+hydra.job.env_set.{tuning.ENV_STORAGE}={tuning.format_value(self.url)}",
                f"+hydra.job.env_set.{tuning.ENV_STUDY}={tuning.format_value(self.study_name)}",
            ]
        return trial, overrides

    def _run_trial(self, study, trial, overrides: list[str]):
        from optuna.trial import TrialState

        beat = _Heartbeat(trial, self.heartbeat_interval)
        log.info("tune: trial %d: %s", trial.number, " ".join(trial.user_attrs["overrides"]))
        try:
            ret = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except Exception as e:
            if not _job_died(e):
                beat.stop()
                trial.set_user_attr("reason", f"interrupted: {type(e).__name__}: {e}"[:500])
                self._tell(study, trial, None, TrialState.FAIL)
                raise
            # a SLURM job killed at its time limit, preempted, on a node that failed: that
            # trial failed (retried like a killed worker's), the study goes on
            beat.stop()
            trial.set_user_attr("reason", f"job died: {type(e).__name__}: {e}"[:500])
            self._tell(study, trial, None, TrialState.FAIL)
            log.warning("tune: trial %d: its job died: %s", trial.number, e)
            self._count(trial.number, TrialState.FAIL, trial.user_attrs.get("reason"))
            self._retry(study, trial.number)
            return None
        except BaseException as e:  # Ctrl-C: the trial did not finish
            beat.stop()
            trial.set_user_attr("reason", f"interrupted: {type(e).__name__}: {e}")
            self._tell(study, trial, None, TrialState.FAIL)
            raise
        beat.stop()
        state, values, attrs = self._outcome(ret, trial.number)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self._tell(study, trial, values, state)
        if self._interrupted:
            self._retry(study, trial.number)
        self._count(trial.number, state, attrs.get("reason"))
        shown = (
            f"{self._objective_label()} {', '.join(f'{v:.4f}' for v in values)}"
            if values is not None
            else attrs.get("reason", "")
        )
        log.info(
            "tune: trial %d %s: %s (epochs: %s)",
            trial.number,
            state.name.lower(),
            shown,
            attrs.get("epochs"),
        )
        with self._lock:
            self._write_outputs(study, final=False)
        return ret

    def _count(self, number: int, state, reason: str | None) -> None:
        """max_failure_rate, the published plugin's stop: more than this fraction of this
        command's finished trials failed (it counts per batch of n_jobs; we have no batches)."""
        if state.name == "PRUNED":
            return
        with self._lock:
            self._finished_here += 1
            if state.name == "FAIL":
                self._failed_here.append(f"trial {number}: {reason}")
            rate, failed = self.max_failure_rate, len(self._failed_here)
            if rate is not None and failed / self._finished_here > rate:
                self._too_many_failures = (
                    f"{failed} of {self._finished_here} trials failed, more than "
                    f"hydra.sweeper.max_failure_rate={rate}: the study stops. Last: "
                    f"{self._failed_here[-1]}"
                )

    def _tell(self, study, trial, values, state) -> None:
        from optuna.trial import TrialState

        try:
            study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        except RuntimeError as e:
            # grid and brute-force samplers call study.stop() once every combination ran; the
            # trial is stored by then (Optuna stores it in a `finally`)
            if "Study.stop" not in str(e):
                raise
            if not self._exhausted:
                log.info("tune: the sampler has tried every combination: no more trials")
            self._exhausted = True

    def _outcome(self, ret, number: int):
        """(state, objective values, user attrs) of a finished job: from its summary.json, else
        (any Hydra app) from its task function's return value."""
        import optuna
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        from runner.errors import ConfigError
        from runner.jobs import RunRecord

        try:
            out_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        except AttributeError:
            out_dir = Path(str(self.config.hydra.sweep.dir)) / str(number)
        attrs: dict[str, Any] = {"dir": str(out_dir)}
        if ret.status == JobStatus.FAILED:
            try:
                _ = ret.return_value  # JobReturn's public way to the job's exception: raises it
            except optuna.TrialPruned:  # an app's reporter said so (runner.tuning.trial_reporter)
                return TrialState.PRUNED, None, attrs
            except Exception as e:  # noqa: BLE001 -- whatever the job raised fails its trial
                attrs["reason"] = f"crashed: {type(e).__name__}: {e}"[:500]
            return TrialState.FAIL, None, attrs
        rec = RunRecord.read(out_dir)  # the job's record: runner/jobs.py, as every stage reads
        summary = rec.summary or None
        if summary is None and not self._runner_app:
            return self._returned(ret.return_value, attrs)
        if summary is None or rec.status == "failed":
            # a job that fails in a sweep says why in error.json (runner/jobs.py record_failure)
            why = rec.error if rec.status == "failed" else None
            if rec.error_type == "Interrupted":  # Ctrl-C / SIGTERM: the user stops the study
                self._interrupted = True
                attrs["reason"] = f"interrupted: {why}"[:500]
                return TrialState.FAIL, None, attrs
            log_file = out_dir / "runner.log"
            attrs["reason"] = (
                f"crashed: {why}"
                if why
                else f"crashed: exit code {ret.return_value}, no summary.json; see {log_file}"
            )[:500]
            return TrialState.FAIL, None, attrs
        attrs["epochs"] = summary.get("epochs")
        attrs["status"] = summary.get("status")
        if summary.get("status") == "pruned":
            return TrialState.PRUNED, None, attrs
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        try:
            values = [self._value(out_dir, summary, m) for m in metrics]
        except ConfigError as e:  # a malformed run file (runner/output.py): this trial failed
            attrs["reason"] = str(e)[:500]
            return TrialState.FAIL, None, attrs
        bad = [
            f"{m} is {v}"
            for m, v in zip(metrics, values)
            if not isinstance(v, (int, float)) or not math.isfinite(v)
        ]
        if summary.get("status") == "nonfinite" or bad:
            attrs["reason"] = summary.get("error") or "; ".join(bad)
            return TrialState.FAIL, None, attrs
        return TrialState.COMPLETE, [float(v) for v in values], attrs

    @staticmethod
    def _value(out_dir: Path, summary: dict, metric: str):
        """A finished runner job's objective: `val_acc` is the run's headline accuracy
        (runner/jobs.py RunRecord: the best val-loss epoch's, as every other stage ranks runs
        and as the study's best trial is then reported), or, when the run's config sets
        `metric` to another one (balanced_accuracy, macro_f1, val_loss), its score on that
        (RunRecord.score, higher is better: the study selects on what every stage selects
        on); any other metric is summary.json's."""
        if metric == "val_acc":
            from runner.jobs import RunRecord

            acc = RunRecord.read(out_dir).score
            return acc if acc is not None else summary.get(metric)
        return summary.get(metric)

    def _returned(self, value: Any, attrs: dict[str, Any]):
        """The published plugin's contract: the task function returns the objective (a number,
        or one per direction)."""
        from optuna.trial import TrialState

        n = len(self.directions)
        items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        try:
            values = [float(v) for v in items]
        except (TypeError, ValueError):
            values = []
        if len(values) != n or not all(math.isfinite(v) for v in values):
            want = "a number" if n == 1 else f"{n} numbers (one per direction)"
            attrs["reason"] = f"the task function returned {value!r}; expected {want}"
            return TrialState.FAIL, None, attrs
        return TrialState.COMPLETE, values, attrs

    # ------------------------------------------------------------------------- study upkeep
    def _budget_left(self, study) -> int:
        """n_trials minus the trials that count: not waiting, not replaced by a retry."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        counted = [t for t in trials if t.state != TrialState.WAITING and t.number not in replaced]
        return self.n_trials - len(counted)

    def _beyond_budget(self, study, trial) -> bool:
        """The budget under concurrency. Each worker (process, or thread of another process)
        checks `_budget_left` and then asks, so two workers can both see the last slot free and
        both ask. The storage numbers trials atomically, so the rule is by number: a trial is
        within the budget when fewer than n_trials trials that count are numbered before it.
        Here "count" is `_budget_left`'s rule (retried originals do not) plus WAITING trials,
        which run before any new trial (ask pops them first). So the trials that run are the
        lowest-numbered ones (0..n-1 without retries), whichever worker asked first.

        A trial beyond the budget is checked right after ask, before it has any parameters, and
        put back as WAITING: not counted, not run, no gap in the numbering (a resumed study with
        a larger n_trials pops it first, as the next number). This worker then stops."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        before = sum(1 for t in trials if t.number < trial.number and t.number not in replaced)
        if before < self.n_trials:
            return False
        trial.set_user_attr(
            "reason",
            f"beyond the budget (n_trials={self.n_trials}; another worker took the last slot): "
            "not run, waiting for a resumed study with a larger n_trials",
        )
        self._set_state(study, trial.number, TrialState.WAITING)
        log.info(
            "tune: trial %d is beyond the budget of %d (%d trial(s) before it): put back as "
            "waiting; this worker stops",
            trial.number,
            self.n_trials,
            before,
        )
        return True

    def _set_state(self, study, number: int, state) -> None:
        """Put an asked trial back (RUNNING -> WAITING): no Study method does, so through the
        storage's documented BaseStorage methods, on our own storage object (a worker built
        without one, e.g. in a test, opens the study's URL)."""
        from runner import tuning

        storage = self._storage if self._storage is not None else tuning.open_storage(self.url)
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_state_values(trial_id, state)

    def _fail_stale(self, study) -> None:
        """Running trials whose worker stopped beating (killed) -> failed (and retried)."""
        import optuna
        from optuna.trial import TrialState

        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.user_attrs.get("heartbeat") or (
                t.datetime_start.timestamp() if t.datetime_start else now
            )
            if now - last <= self.grace_period:
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another worker got there first
            log.warning(
                "tune: trial %d was running without a heartbeat for %.0f s (its worker "
                "stopped): marked failed%s",
                t.number,
                now - last,
                "; retrying its parameters" if self.retry else "",
            )
            self._retry(study, t.number)

    def _retry(self, study, number: int) -> None:
        """A failed (killed, interrupted) trial's parameters again, `retry` times at most."""
        import optuna

        if not self.retry:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.retry)
            retry(study, study.get_trials(deepcopy=True)[number])

    def _current_params(self, space) -> tuple[dict[str, Any], list[str]]:
        """Warm start: the current config's values of the search space (and what is outside it).
        The current config is the one each job really gets (without its searched values): with
        `from=`, the lineage applied (runner/lineage.py), not the sweeper's composition."""
        from runner import tuning

        cfg, choices, taken = self._current_config(space)
        params, skipped = {}, []
        for key, dist in space.distributions.items():
            bare = key.lstrip("+")
            if bare in choices:
                value = self._current_choice(bare, cfg, choices, taken)
            else:
                try:
                    value = OmegaConf.select(cfg, bare, default=None)
                except Exception:  # noqa: BLE001 -- an interpolation that cannot resolve here
                    value = None
            if tuning.contains(dist, value):
                params[key] = value
            else:
                skipped.append(f"{key}={value!r}")
        return params, skipped

    def _current_config(self, space) -> tuple[DictConfig, Any, dict[str, Any] | None]:
        """(config, group choices, keys taken from the source run or None without `from=`).

        As runner/app.py does in each job: the job's composition (the command's and the
        space's fixed overrides; the searched keys are left at their config values, so they
        do not count as set by the command), then `from=`'s lineage (source outcome + stage
        changes + command changes)."""
        from runner import jobs
        from runner.errors import ConfigError

        try:
            return jobs.sweep_job_config(
                self.hydra_context.config_loader, self.config, list(space.fixed)
            )
        except ConfigError as e:
            # a bad from= fails every job the same way: say so once, exit 2, no traceback
            # (Hydra prints the whole stack of an exception raised outside a job)
            log.error("config error: %s", e)
            raise SystemExit(e.exit_code) from None

    def _current_choice(self, group: str, cfg, choices, taken: dict[str, Any] | None):
        """A group's current option. With `from=`, when the group's values come (in part) from
        the source run, the option is the one whose YAML declares the inherited `name` (the
        lineage holds values, not option names); when that cannot be told, the composed choice
        (as without `from=`), and the log says so."""
        current = choices.get(group)
        prefix = group.replace("/", ".")
        if not taken or not any(k == prefix or k.startswith(prefix + ".") for k in taken):
            return current
        name = OmegaConf.select(cfg, f"{prefix}.name", default=None, throw_on_missing=False)
        found = [o for o in self._group_options(group) if name is not None and o[1] == name]
        if len(found) == 1:
            return found[0][0]
        log.info(
            "tune: warm start: %s comes from the source run (from=) but which %s option it is "
            "cannot be told (%s.name=%r %s); trial 0 uses the composed choice %s=%s",
            prefix,
            group,
            prefix,
            name,
            "is declared by " + ", ".join(o[0] for o in found) if found else "is declared by none",
            group,
            current,
        )
        return current

    def _group_options(self, group: str) -> list[tuple[str, Any]]:
        """(option, the `name` its YAML declares) for each option of a config group."""
        loader = self.hydra_context.config_loader
        out = []
        try:
            options = loader.get_group_options(group)
        except Exception:  # noqa: BLE001 -- not a group this loader knows: nothing to match
            return out
        sources = loader.get_sources()  # the search path's config sources (Hydra's plugin API)
        for o in options:
            try:
                path = f"{group}/{o}"
                source = next(src for src in sources if src.is_config(path))
                declared = OmegaConf.select(
                    source.load_config(path).config, "name", default=None, throw_on_missing=False
                )
            except Exception as e:  # noqa: BLE001 -- an option that does not load declares nothing
                log.debug("tune: warm start: %s/%s does not load: %s", group, o, e)
                continue
            out.append((o, declared))
        return out

    def _log_warm(self, params: dict[str, Any], skipped: list[str]) -> None:
        """Trial 0 takes the current config's values: whichever worker's ask creates trial number
        0 (Optuna numbers trials under a lock on the study, so exactly one) samples it with them
        fixed (_sampler_for). Not an enqueued trial: two workers starting a fresh study together
        both see it empty and would both enqueue (skip_if_exists is not atomic across
        processes)."""
        if skipped:
            log.info(
                "tune: warm start: %s outside the search space; trial 0 samples %s",
                ", ".join(skipped),
                "it" if len(skipped) == 1 else "them",
            )
        log.info("tune: warm start: trial 0 is the current config %s", params)

    # ------------------------------------------------------------------------- checks, paths
    def _check_settings(self) -> None:
        """Every bad sweeper setting at once, each with the key, the value and what fits."""
        from runner import tuning
        from runner.errors import ConfigError

        p = []
        bad = [d for d in self.directions if d not in tuning.DIRECTIONS]
        if bad or not self.directions:
            p.append(
                f"hydra.sweeper.direction={self.direction!r} is not one of maximize, minimize "
                "(or a list of them, one per objective)"
            )
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if len(self.directions) > 1 and self._runner_app and len(metrics) != len(self.directions):
            p.append(
                f"hydra.sweeper.metric={self.metric!r} with {len(self.directions)} directions: "
                f"give one summary.json figure per direction, e.g. metric=[val_acc,images_per_s]"
            )
        elif len(self.directions) == 1 and self._runner_app and not bad:
            if self.metric not in tuning.METRICS:
                p.append(
                    f"hydra.sweeper.metric={self.metric!r} is not one of "
                    f"{', '.join(tuning.METRICS)}"
                )
            elif (self.metric == "val_loss") != (self.direction == "minimize"):
                p.append(
                    f"hydra.sweeper.metric={self.metric} with direction={self.direction}: the "
                    f"study would look for the worst trial; use direction="
                    f"{'minimize' if self.metric == 'val_loss' else 'maximize'}"
                )
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            p.append(f"hydra.sweeper.n_trials={self.n_trials} must be >= 1 (the trials to run)")
        if self.n_jobs is not None and self.n_jobs < 1:
            p.append(f"hydra.sweeper.n_jobs={self.n_jobs} must be >= 1 (or null)")
        rate = self.max_failure_rate
        if rate is not None and not 0.0 <= rate <= 1.0:
            p.append(
                f"hydra.sweeper.max_failure_rate={rate} must be between 0.0 and 1.0 (or null: "
                "failed trials never stop the study)"
            )
        if self.custom_search_space:
            try:
                self._custom = _function(self.custom_search_space)
            except ConfigError as e:
                p += e.problems
        for check in (
            lambda: tuning.check_sampler(self.sampler),
            lambda: tuning.pruner_spec(self.pruner),
        ):
            try:
                check()
            except ConfigError as e:
                p += e.problems
        if p:
            raise ConfigError(p)

    def _workers(self) -> int:
        n = self.n_jobs
        if n is None:
            n = int(OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=1) or 1)
            n = max(n, 1)
        if n > 1 and self._in_process():
            log.warning(
                "tune: the basic launcher runs one job at a time in this process; "
                "n_jobs=%d needs hydra/launcher=joblib (or submitit): using 1",
                n,
            )
            n = 1
        return n

    def _set_study_dir(self, name: str | None) -> Path:
        """The sweep folder is the study's folder: study_dir, else multirun/tune/<name> for a
        kept study (the same command resumes there), else Hydra's sweep folder (an in-memory
        study, whose trial numbers restart at 0 every time). hydra.sweep.dir given wins."""
        cfg = self.config
        given = any(str(o).startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra)
        folder = self.study_dir or (f"multirun/tune/{name}" if name else None)
        if given or not folder:
            return Path(str(cfg.hydra.sweep.dir)).resolve()
        path = Path(folder).resolve()
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.sweep.dir = str(path)
            # jobs compose their config afresh from these overrides: they land in the same folder
            cfg.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quote(str(path))}")
        return path

    def _launcher_follows_study_dir(self) -> None:
        """Hydra instantiates the launcher (resolving its settings) before `_set_study_dir` moves
        the sweep folder: submitit's folder (`${hydra.sweep.dir}/.submitit/%j`: each job's
        pickles, stdout and stderr) would stay in the dated folder. Resolve it again."""
        params = getattr(self.launcher, "params", None)
        if isinstance(params, dict) and "submitit_folder" in params:
            folder = OmegaConf.select(self.config, "hydra.launcher.submitit_folder")
            if folder:
                params["submitit_folder"] = str(folder)

    def _check_composes(self, space) -> None:
        """Compose one trial's config before any job runs: typos in keys fail here, once."""
        from runner import jobs, tuning

        sample = [f"{k}={tuning.format_value(_first(d))}" for k, d in space.distributions.items()]
        jobs.check_sweep_batch(self, [list(space.fixed) + sample])

    # ------------------------------------------------------------------------- outputs
    def _write_outputs(self, study, final: bool) -> None:
        from runner import tuning

        out = self.out
        metric = self._objective_label() if len(self.directions) == 1 else self.metric
        if not self._runner_app:
            metric = "value" if len(self.directions) == 1 else None
        rows = tuning.trial_rows(study, metric, out.path)
        if rows:
            out.write_csv("trials.csv", rows)
        # the published plugin's result file: best params and value, or the Pareto front
        out.write_text(
            "optimization_results.yaml",
            OmegaConf.to_yaml(OmegaConf.create(tuning.optimization_results(study))),
        )
        best = tuning.best_trial(study)
        warn: list[str] = []
        if best is not None:
            warn = tuning.edge_warnings(best.params, best.distributions, self.edge_fraction)
        if best is not None and self._runner_app:  # a recipe-runner config to run again
            header = [
                (
                    f"Best trial {best.number} of Optuna study {self.study_name!r}: {self.metric} "
                    f"{best.value:.6g} ({self.direction}); {best.user_attrs.get('dir')}"
                ),
                f"python -m runner --config-dir {out.path} --config-name best [stage=...]",
                "Check it into your experiment repo's conf/ (e.g. as tuned.yaml) and run",
                "  python -m runner --config-dir ./conf --config-name tuned",
            ]
            groups = list(self.config.hydra.runtime.choices.keys())
            out.write_text(
                "best.yaml", tuning.best_yaml(best.user_attrs.get("overrides", []), groups, header)
            )
        if not final:
            return
        summary = tuning.study_summary(study, metric, self.direction, self.url, self.n_trials, warn)
        summary["study_dir"] = str(out.path)
        out.write_json("study.json", summary)
        for w in warn:
            log.warning("tune: %s", w)
        plots = tuning.save_plots(study, out, metric) if rows else []
        out.write_report(
            tuning.report_html(
                summary, rows, plots, self.space.distributions, self.sampler, self.pruner
            )
        )
        st = summary["states"]
        log.info(
            "tune: %d complete, %d pruned, %d failed; %d epochs trained; best %s -> %s",
            st["COMPLETE"],
            st["PRUNED"],
            st["FAIL"],
            summary["epochs_trained"],
            f"trial {best.number}: {metric} {best.value:.4f} {best.params}"
            if best
            else f"Pareto front of {len(summary['pareto_front'])}"
            if summary["pareto_front"] is not None
            else "none",
            out.path / "report.html",
        )


class _Heartbeat:
    """Records `heartbeat` (unix time) on the running trial every `interval` seconds."""

    def __init__(self, trial, interval: float):
        self._stop = threading.Event()
        self._trial = trial
        self._thread = threading.Thread(
            target=self._run,
            args=(max(float(interval), 0.1),),
            daemon=True,
            name=f"tune-heartbeat-{trial.number}",
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception as e:  # noqa: BLE001 -- a storage hiccup must not kill the trial
                log.debug("heartbeat of trial %d failed: %s", self._trial.number, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _job_died(e: BaseException) -> bool:
    """submitit's word for a job that ended without a result (timeout, preemption, node failure,
    scancel): UncompletedJobError, FailedJobError. Not a launcher that cannot submit at all."""
    return type(e).__module__.startswith("submitit") and type(e).__name__ in (
        "UncompletedJobError",
        "FailedJobError",
    )


def _function(path: str):
    """custom_search_space's function: a dotted path (hydra.utils.get_method); the published
    plugin's example names a function of the app's own script (`.script-name.configure`), so a
    path whose module cannot be imported falls back to that name in the running script."""
    from hydra.utils import get_method

    from runner.errors import ConfigError

    try:
        return get_method(path.lstrip("."))
    except Exception as e:  # noqa: BLE001 -- Hydra wraps import errors in several types
        main = sys.modules.get("__main__")
        fn = getattr(main, path.rsplit(".", 1)[-1], None)
        if callable(fn):
            return fn
        raise ConfigError(
            f"hydra.sweeper.custom_search_space={path!r} cannot be imported ({e}); expected "
            "a dotted path to a function (cfg, trial) -> None, e.g. my_app.search.configure"
        ) from None


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _first(dist) -> Any:
    from optuna.distributions import CategoricalDistribution

    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
