"""OptunaSweeper: an Optuna study as a Hydra multirun, on Optuna's ask-and-tell API.

The loop, per worker (one, or `n_jobs` threads each asking when free - no batches):
  mark stale trials failed -> stop when the budget is spent -> ask a trial -> launch it as one
  Hydra job (its directory is its trial number) -> read its summary.json -> tell the study.
The job reports every epoch to the study itself (runner/tuning.py TrialReporter), so pruning
happens inside the job; a NaN, pruned or crashing trial is told as such and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: Optional[int],
        direction: str,
        metric: str,
        study_name: str,
        storage: Optional[str],
        study_dir: Optional[str],
        sampler: Any,
        pruner: Any,
        params: Any,
        warm_start: bool,
        heartbeat_interval: int,
        grace_period: int,
        retry: int,
        edge_fraction: float,
    ) -> None:
        def plain(x):
            return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x

        self.n_trials, self.n_jobs, self.direction, self.metric = (
            n_trials,
            n_jobs,
            direction,
            metric,
        )
        self.study_name, self.storage, self.study_dir = str(study_name), storage, study_dir
        self.sampler, self.pruner, self.params = plain(sampler), plain(pruner), plain(params) or {}
        if isinstance(self.sampler, str):  # hydra.sweeper.sampler=tpe: the class's defaults
            self.sampler = {"name": self.sampler}
        self.warm_start, self.retry, self.edge_fraction = warm_start, retry, edge_fraction
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.config: Optional[DictConfig] = None
        self._lock = threading.Lock()
        self._qmc = None
        self._warm: Optional[Tuple[Dict[str, Any], List[str]]] = None
        self._exhausted = False
        self._interrupted = False

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: List[str]) -> Any:
        import optuna

        from runner import tuning
        from runner.errors import ConfigError
        from runner.output import RunDir

        self._check_settings()
        space = tuning.parse_search_space(self.params, arguments)
        if not space.distributions:
            raise ConfigError(
                "hydra.sweeper.params is empty: nothing to search. Give a search "
                "space, e.g. optim.lr='tag(log, interval(1e-4, 1e-1))' (docs/tune.md)"
            )
        study_dir = self._set_study_dir()
        self._launcher_follows_study_dir()
        n_jobs = self._workers()
        url = tuning.storage_url(self.storage, study_dir, n_jobs)
        self.url = url
        self._check_composes(space)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = tuning.open_storage(url)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=tuning.build_sampler(self.sampler),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction!r} but study "
                f"{self.study_name!r} in {url} was created to "
                f"{study.direction.name.lower()}; use another study_name"
            )
        study.set_user_attr(tuning.ATTR_METRIC, self.metric)
        study.set_user_attr(tuning.ATTR_PRUNER, tuning.pruner_spec(self.pruner))
        if self._sampler_name() == "qmc":
            self._qmc = tuning.build_sampler(self.sampler)
        before = len(study.get_trials(deepcopy=False))
        self._fail_stale(study)
        if self.warm_start and before == 0:
            self._warm = self._current_params(space)
        log.info(
            "tune: study %r in %s: %d trial(s) already, budget %d; %d worker(s); %s %s",
            self.study_name,
            url,
            before,
            self.n_trials,
            n_jobs,
            self.direction,
            self.metric,
        )
        log.info("tune: dashboard: %s", tuning.dashboard_command(url))

        self.out = RunDir(study_dir)
        self.space = space
        results: List[Any] = []
        if n_jobs == 1:
            self._worker(study, results)
        else:
            with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="tune-worker") as pool:
                for f in [pool.submit(self._worker, study, results) for _ in range(n_jobs)]:
                    f.result()
        self._write_outputs(study, final=True)
        if self._interrupted:
            log.warning(
                "tune: interrupted; run the same command again to resume study %r", self.study_name
            )
            return results
        if tuning.best_trial(study) is None:
            raise RuntimeError(
                f"no trial of study {self.study_name!r} completed ({url}); see the "
                f"trials' logs under {study_dir} and {study_dir / 'trials.csv'}"
            )
        return results

    # ------------------------------------------------------------------------- one worker
    def _worker(self, study, results: List[Any]) -> None:
        while True:
            with self._lock:
                self._fail_stale(study)
                if self._exhausted or self._interrupted or self._budget_left(study) <= 0:
                    return
                trial, overrides = self._ask(study)
            if trial is None:  # another worker took the budget's last slot: this one stops
                return
            results.append(self._run_trial(study, trial, overrides))

    def _ask(self, study) -> Tuple[Any, List[str]]:
        """The next trial and its job's overrides; (None, []) when it falls beyond the budget."""
        from runner import tuning

        trial = study.ask()
        if self._beyond_budget(study, trial):
            return None, []
        trial.set_user_attr("heartbeat", time.time())
        for key in ("reason", "epochs", "status"):  # a retry starts with its original's attributes
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        # a sampler seeded by (seed, trial number): resumed or parallel workers never replay draws
        study.sampler = self._qmc or tuning.build_sampler(self.sampler, trial.number)
        warm, self._warm = self._warm, None
        if warm is not None and trial.number == 0:
            study.sampler = self._warm_sampler(study.sampler, *warm)
        values = {k: tuning.suggest(trial, k, d) for k, d in self.space.distributions.items()}
        overrides = list(self.space.fixed) + [
            f"{k}={tuning.format_value(v)}" for k, v in values.items()
        ]
        trial.set_user_attr("overrides", overrides)
        overrides += [
            f"tune.trial={trial.number}",
            f"tune.storage={tuning.format_value(self.url)}",
            f"tune.study_name={tuning.format_value(self.study_name)}",
        ]
        return trial, overrides

    def _run_trial(self, study, trial, overrides: List[str]):
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
            self._retry(study, trial.number)
            return None
        except BaseException as e:  # Ctrl-C: the trial did not finish
            beat.stop()
            trial.set_user_attr("reason", f"interrupted: {type(e).__name__}: {e}")
            self._tell(study, trial, None, TrialState.FAIL)
            raise
        beat.stop()
        state, value, attrs = self._outcome(ret, trial.number)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self._tell(study, trial, value, state)
        if self._interrupted:
            self._retry(study, trial.number)
        shown = f"{self.metric} {value:.4f}" if value is not None else attrs.get("reason", "")
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

    def _tell(self, study, trial, value, state) -> None:
        from optuna.trial import TrialState

        try:
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except RuntimeError as e:
            # grid and brute-force samplers call study.stop() once every combination ran; the
            # trial is stored by then (Optuna stores it in a `finally`)
            if "Study.stop" not in str(e):
                raise
            if not self._exhausted:
                log.info("tune: the sampler has tried every combination: no more trials")
            self._exhausted = True

    def _outcome(self, ret, number: int):
        """(state, value, user attrs) of a finished job, from its summary.json."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        try:
            out_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        except AttributeError:
            out_dir = Path(str(self.config.hydra.sweep.dir)) / str(number)
        attrs: Dict[str, Any] = {"dir": str(out_dir)}
        if ret.status == JobStatus.FAILED:
            e = ret._return_value
            attrs["reason"] = f"crashed: {type(e).__name__}: {e}"[:500]
            return TrialState.FAIL, None, attrs
        try:
            summary = json.loads((out_dir / "summary.json").read_text())
        except (OSError, ValueError):
            try:  # a job that fails in a sweep says why in error.json (runner/app.py)
                error = json.loads((out_dir / "error.json").read_text())
                why = error.get("error")
            except (OSError, ValueError, AttributeError):
                error, why = {}, None
            if error.get("type") == "Interrupted":  # Ctrl-C / SIGTERM: the user stops the study
                self._interrupted = True
                attrs["reason"] = f"interrupted: {why}"[:500]
                return TrialState.FAIL, None, attrs
            log_file = out_dir / "runner.log"
            attrs["reason"] = (
                f"crashed: {why}"
                if why
                else f"crashed: exit code {ret._return_value}, no summary.json; see {log_file}"
            )[:500]
            return TrialState.FAIL, None, attrs
        attrs["epochs"] = summary.get("epochs")
        attrs["status"] = summary.get("status")
        if summary.get("status") == "pruned":
            return TrialState.PRUNED, None, attrs
        value = summary.get(self.metric)
        if summary.get("status") == "nonfinite" or value is None or not math.isfinite(value):
            attrs["reason"] = summary.get("error") or f"{self.metric} is {value}"
            return TrialState.FAIL, None, attrs
        return TrialState.COMPLETE, float(value), attrs

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
        study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
        log.info(
            "tune: trial %d is beyond the budget of %d (%d trial(s) before it): put back as "
            "waiting; this worker stops",
            trial.number,
            self.n_trials,
            before,
        )
        return True

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

    def _current_params(self, space) -> Tuple[Dict[str, Any], List[str]]:
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

    def _current_config(self, space) -> Tuple[DictConfig, Any, Optional[Dict[str, Any]]]:
        """(config, group choices, keys taken from the source run or None without `from=`).

        As runner/app.py does in each job: the job's composition (the command's and the
        space's fixed overrides; the searched keys are left at their config values, so they
        do not count as set by the command), then `from=`'s lineage (source outcome + stage
        changes + command changes)."""
        from runner import lineage
        from runner.errors import ConfigError

        cfg = self.config
        if not cfg.get("from") or str(cfg.stage.name) in lineage.OWN_FROM_STAGES:
            return cfg, cfg.hydra.runtime.choices, None
        fixed = list(space.fixed)
        job = self.hydra_context.config_loader.load_sweep_config(cfg, fixed)
        choices = OmegaConf.to_container(job.hydra.runtime.choices)
        with read_write(job), open_dict(job):  # a job's task config has no hydra node
            del job["hydra"]
        try:
            result, lin = lineage.inherit(
                job,
                fixed,
                str(cfg.hydra.runtime.cwd),
                str(cfg.hydra.job.config_name or "config"),
            )
        except ConfigError as e:
            # a bad from= fails every job the same way: say so once, exit 2, no traceback
            # (Hydra prints the whole stack of an exception raised outside a job)
            log.error("config error: %s", e)
            raise SystemExit(e.exit_code) from None
        return result, choices, lin.from_source

    def _current_choice(self, group: str, cfg, choices, taken: Optional[Dict[str, Any]]):
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

    def _group_options(self, group: str) -> List[Tuple[str, Any]]:
        """(option, the `name` its YAML declares) for each option of a config group."""
        loader = self.hydra_context.config_loader
        out = []
        try:
            options = loader.get_group_options(group)
        except Exception:  # noqa: BLE001 -- not a group this loader knows: nothing to match
            return out
        for o in options:
            try:
                res = loader.repository.load_config(f"{group}/{o}")
                declared = OmegaConf.select(
                    res.config, "name", default=None, throw_on_missing=False
                )
            except Exception as e:  # noqa: BLE001 -- an option that does not load declares nothing
                log.debug("tune: warm start: %s/%s does not load: %s", group, o, e)
                continue
            out.append((o, declared))
        return out

    def _warm_sampler(self, sampler, params: Dict[str, Any], skipped: List[str]):
        """Trial 0 takes the current config's values: whichever worker's ask creates trial number
        0 (Optuna numbers trials under a lock on the study, so exactly one) samples it with them
        fixed. Not an enqueued trial: two workers starting a fresh study together both see it
        empty and would both enqueue (Optuna's skip_if_exists is not atomic across processes)."""
        import optuna

        if skipped:
            log.info(
                "tune: warm start: %s outside the search space; trial 0 samples %s",
                ", ".join(skipped),
                "it" if len(skipped) == 1 else "them",
            )
        log.info("tune: warm start: trial 0 is the current config %s", params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.PartialFixedSampler(params, sampler)

    # ------------------------------------------------------------------------- checks, paths
    def _check_settings(self) -> None:
        from runner import tuning
        from runner.errors import ConfigError

        p = []
        if self.direction not in tuning.DIRECTIONS:
            p.append(f"hydra.sweeper.direction={self.direction!r} is not one of maximize, minimize")
        if self.metric not in tuning.METRICS:
            p.append(
                f"hydra.sweeper.metric={self.metric!r} is not one of {', '.join(tuning.METRICS)}"
            )
        elif (self.metric == "val_loss") != (self.direction == "minimize"):
            p.append(
                f"hydra.sweeper.metric={self.metric} with direction={self.direction}: the "
                f"study would look for the worst trial; use direction="
                f"{'minimize' if self.metric == 'val_loss' else 'maximize'}"
            )
        if self.n_trials < 1:
            p.append(f"hydra.sweeper.n_trials={self.n_trials} must be >= 1")
        if self.n_jobs is not None and self.n_jobs < 1:
            p.append(f"hydra.sweeper.n_jobs={self.n_jobs} must be >= 1 (or null)")
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

    def _sampler_name(self) -> str:
        s = self.sampler
        return (
            s
            if isinstance(s, str)
            else (s or {}).get("name", "random")
            if "_target_" not in (s or {})
            else ""
        )

    def _workers(self) -> int:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        n = self.n_jobs
        if n is None:
            n = int(OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=1) or 1)
            n = max(n, 1)
        if n > 1 and isinstance(self.launcher, BasicLauncher):
            log.warning(
                "tune: the basic launcher runs one job at a time in this process; "
                "n_jobs=%d needs hydra/launcher=joblib (or submitit): using 1",
                n,
            )
            n = 1
        return n

    def _set_study_dir(self) -> Path:
        """The sweep folder is the study's folder (unless hydra.sweep.dir was given)."""
        cfg = self.config
        given = any(str(o).startswith("hydra.sweep.dir=") for o in cfg.hydra.overrides.hydra)
        if given or not self.study_dir:
            return Path(str(cfg.hydra.sweep.dir)).resolve()
        path = Path(self.study_dir).resolve()
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
        from runner import tuning

        sample = [f"{k}={tuning.format_value(_first(d))}" for k, d in space.distributions.items()]
        self.validate_batch_is_legal([list(space.fixed) + sample])

    # ------------------------------------------------------------------------- outputs
    def _write_outputs(self, study, final: bool) -> None:
        from runner import tuning

        out = self.out
        rows = tuning.trial_rows(study, self.metric, out.path)
        if rows:
            out.write_csv("trials.csv", rows)
        best = tuning.best_trial(study)
        warn: List[str] = []
        if best is not None:
            warn = tuning.edge_warnings(best.params, best.distributions, self.edge_fraction)
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
        summary = tuning.study_summary(
            study, self.metric, self.direction, self.url, self.n_trials, warn
        )
        summary["study_dir"] = str(out.path)
        out.write_json("study.json", summary)
        for w in warn:
            log.warning("tune: %s", w)
        plots = tuning.save_plots(study, out, self.metric) if rows else []
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
            f"trial {best.number}: {self.metric} {best.value:.4f} {best.params}"
            if best
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
            except Exception as e:  # a storage hiccup must not kill the trial
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


def _first(dist) -> Any:
    from optuna.distributions import CategoricalDistribution

    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
