"""recipe-runner's Optuna sweeper: `python -m runner -m stage=tune` (docs/tune.md).

Hydra loads sweepers only from the `hydra_plugins` namespace package; this one is written on
current Optuna's ask-and-tell API (the published hydra-optuna-sweeper pins optuna < 3). The
Optuna parts it shares with the trial jobs live in runner/tuning.py.
"""
