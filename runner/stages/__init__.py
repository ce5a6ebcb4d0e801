"""Stage registry: `stage.name` -> module with `run(cfg, ctx) -> exit code`.

Plain dict of module paths, imported only when the stage runs (keeps --help fast);
tests keep it in sync with conf/stage/*.yaml.
"""
STAGES = {
    "train": "runner.stages.train",
    "baseline": "runner.stages.baseline",
    "inspect": "runner.stages.inspect",
    "tune": "runner.stages.tune",
    "overfit": "runner.stages.overfit",
    "regularize": "runner.stages.regularize",
    "squeeze": "runner.stages.squeeze",
    "recipe": "runner.stages.recipe",
}


def get_stage(name: str):
    import importlib

    return importlib.import_module(STAGES[name])


def stage_flag(name: str, flag: str, default: bool = False) -> bool:
    """A stage module's declared flag (runner/stages/protocol.py), e.g. PASSES_OVERRIDES."""
    if name not in STAGES:
        return default
    return bool(getattr(get_stage(name), flag, default))
