"""The sweeper's config node (`hydra/sweeper: optuna`): every key of the published
hydra-optuna-sweeper 1.3 (n_trials, n_jobs, sampler, direction, storage, study_name, params,
search_space, custom_search_space, max_failure_rate) plus pruner and a few of our own.
Where our default differs from the published plugin's, its comment says so (docs/tune.md,
"Coming from hydra-optuna-sweeper").

Imported by Hydra's plugin scan on every start: no Optuna import here.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.recipe_optuna_sweeper.sweeper.OptunaSweeper"
    # the sweeper builds sampler and pruner itself (per trial, with derived seeds)
    _recursive_: bool = False
    # the budget: finished trials (complete, pruned or failed) the study should hold; a resumed
    # study counts the ones it already has
    n_trials: int = 8
    # trials this process runs at once, each asking for the next trial as soon as it is free;
    # null = the launcher's n_jobs (e.g. hydra.launcher.n_jobs with hydra/launcher=joblib), else 1
    n_jobs: int | None = None
    # maximize or minimize `metric`; a list (e.g. [minimize, minimize]) is a multi-objective
    # study. Ours maximizes (val_acc); the published plugin's default is minimize
    direction: Any = "maximize"
    # the trial's summary.json figure the study optimises (a list with a list of directions);
    # also reported every epoch for pruning. A job that writes no summary.json (any Hydra app)
    # is scored by its task function's return value instead
    metric: Any = "val_acc"
    # null: an app that declares `tune` (recipe-runner) uses its `name`, so the same command
    # resumes; any other app gets Optuna's own generated name (as the published plugin)
    study_name: str | None = None
    # auto: SQLite file in study_dir (a journal file when n_jobs > 1), kept for resume; null: in
    # memory, as the published plugin (nothing kept, no pruning from other processes);
    # 'journal'; a path to a *.journal file; or any Optuna RDB URL (postgresql://, sqlite:///)
    storage: str | None = "auto"
    # the study's folder: trials by number, the default storage, best.yaml, trials.csv, plots,
    # report.html, optimization_results.yaml. null: multirun/tune/<study name>, fixed per name so
    # that re-running the command resumes; Hydra's hydra.sweep.dir for an in-memory study or one
    # named by Optuna. An explicit hydra.sweep.dir on the command line wins
    study_dir: str | None = None
    # sampler and pruner are config groups, like Hydra's launchers: hydra/sweeper/sampler=tpe,
    # hydra/sweeper/pruner=hyperband; then hydra.sweeper.pruner.<key>=... sets an argument
    # sampler `default`: random search first (the recipe), NSGA-II for a list of directions
    defaults: list[Any] = field(
        default_factory=lambda: [{"sampler": "default"}, {"pruner": "none"}]
    )
    # `name` (random, tpe, qmc, gp, cmaes, nsgaii, motpe, grid) or `_target_:
    # optuna.samplers.X`; other keys are its arguments
    sampler: Any = MISSING
    # `name` (median, hyperband, none) or `_target_`; other keys are its arguments
    pruner: Any = MISSING
    # search space: config key -> interval(a, b) | tag(log, interval(a, b)) | int(interval(a, b))
    # | range(a, b, step) (end included, as the published plugin) | choice(a, b, ...)
    params: dict[str, Any] | None = field(default_factory=dict)
    # deprecated by the published plugin, kept so its configs run: key -> {type: int|float|
    # categorical, low, high, step, log, choices}; params wins when both are given
    search_space: dict[str, Any] | None = None
    # a dotted path to a function (cfg, trial) -> None that suggests more parameters on the trial
    # after `params` (Optuna's define-by-run API); its suggestions become overrides too
    custom_search_space: str | None = None
    # null: failed trials never stop the study (ours); a number (the published plugin's default
    # is 0.0): stop once more than this fraction of this command's finished trials failed
    max_failure_rate: float | None = None
    # the published plugin's batching hook (after 1.3): accepted, unused (we ask per free worker)
    experiment_sequence: str | None = None
    # the current config as trial 0 of a new study, so the search can only improve on it
    warm_start: bool = True
    # a running trial's worker records a heartbeat this often (seconds) ...
    heartbeat_interval: int = 30
    # ... and a running trial without one for this long is stale (its worker died): marked failed
    grace_period: int = 120
    # run a stale trial's parameters again, at most this many times (0 = only mark it failed)
    retry: int = 0
    # warn when the best value lies within this fraction of its range's ends
    edge_fraction: float = 0.1


# the options: plain mappings (`name` + keyword arguments of the Optuna class), so an overlay
# may add any argument the class takes. The published plugin's option names; every option is
# seeded (0) so that a study is reproducible by default (the published plugin's are unseeded)
SAMPLERS = {
    # random for one direction, nsgaii for a list of directions (the published plugin's tpe is
    # model-based from the start; the recipe searches at random first)
    "default": {"name": "default", "seed": 0},
    # the recipe's first choice: random search
    "random": {"name": "random", "seed": 0},
    # quasi-random (scrambled Sobol): covers the space more evenly than random draws
    "qmc": {"name": "qmc", "seed": 0},
    # model-based, once random search has shown where the good region is
    "tpe": {"name": "tpe", "seed": 0},
    # Gaussian-process Bayesian optimisation: few, expensive trials
    "gp": {"name": "gp", "seed": 0},
    # evolution strategy for continuous spaces (needs the `cmaes` package)
    "cmaes": {"name": "cmaes", "seed": 0},
    # genetic algorithm, the published plugin's choice for a list of directions
    "nsgaii": {"name": "nsgaii", "seed": 0},
    # multi-objective TPE: Optuna 4 folded MOTPESampler into TPESampler
    "motpe": {"name": "motpe", "seed": 0},
    # every combination once (discrete spaces: choice and range); the study stops when done
    "grid": {"name": "grid", "seed": 0},
}
PRUNERS = {
    "none": {"name": "none"},
    # stop a trial behind the median of the finished ones at the same epoch; the warm-start
    # trial is the first reference; no verdict before epoch 2 (early epochs rank learning
    # rates by speed). On digits, 16 trials: 58% of the epochs, same best trial (docs/tune.md)
    "median": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
    # successive halving in brackets; resources are epochs
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="recipe-runner")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="recipe-runner")
for _name, _node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="recipe-runner")
