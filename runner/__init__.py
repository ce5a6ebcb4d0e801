"""recipe-runner: Karpathy's recipe for training neural networks, as a config-driven runner.

From Python (README "From Python and notebooks"): `runner.run(stage, overrides)` runs a stage
as the CLI would and returns a `runner.Run`; `runner.load(run_dir)` reads a run directory
back; `runner.predict(run_dir, inputs)` and `runner.export(run_dir, formats)` use a run's
final model; `runner.lr_range(overrides)` runs an lr range test (runner/lrfind.py) and
returns its verdict. Config errors raise `runner.ConfigError`. Imported lazily: `import runner` stays light.
"""

__version__ = "0.1.0"

__all__ = [
    "run",
    "load",
    "plan",
    "predict",
    "export",
    "lr_range",
    "Run",
    "ConfigError",
    "RunnerError",
]


def __getattr__(name):
    if name in ("run", "load", "Run", "lr_range"):
        from runner import api

        return getattr(api, name)
    if name == "predict":
        from runner.prediction import predict

        return predict
    if name == "export":
        from runner.exporting import export

        return export
    if name == "plan":
        from runner.jobs import plan

        return plan
    if name in ("ConfigError", "RunnerError"):
        from runner import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
