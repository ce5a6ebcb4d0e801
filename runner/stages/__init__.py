"""The stage registry: `stage.name` -> the module that implements it (runner/stages/protocol.py).

The one place stages are listed, in recipe order (train, the skeleton every stage builds on,
first; the recipe, which runs the others, last). Modules are imported when asked for: they
are light (torch loads inside their functions), so the CLI can register every stage's Params.
Lineage, the recipe and the app ask this registry and each stage's module; none of them
switches on a stage's name. tests/test_stages.py keeps it in sync with conf/stage/*.yaml.
"""

from __future__ import annotations

STAGES = {
    "train": "runner.stages.train",
    "inspect": "runner.stages.inspect",
    "baseline": "runner.stages.baseline",
    "overfit": "runner.stages.overfit",
    "regularize": "runner.stages.regularize",
    "datacurve": "runner.stages.datacurve",
    "tune": "runner.stages.tune",
    "squeeze": "runner.stages.squeeze",
    "recipe": "runner.stages.recipe",
}


def get_stage(name: str):
    """The stage's module (KeyError for an unknown name)."""
    import importlib

    return importlib.import_module(STAGES[name])


def stage_flag(name: str, flag: str, default: bool = False) -> bool:
    """A stage module's declared flag (see runner/stages/protocol.py), e.g. TRAINS."""
    if name not in STAGES:
        return default
    return bool(getattr(get_stage(name), flag, default))
