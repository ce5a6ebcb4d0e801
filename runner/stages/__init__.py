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
