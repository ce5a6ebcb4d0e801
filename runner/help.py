"""`python -m runner --help`: the stages, one line each, for Hydra's app help template.

conf/hydra/help/runner.yaml is the page; `${runner_stages:}` in it resolves to the lines
built here from the stage registry and each stage module's docstring, read with `ast` so
that --help imports neither torch nor timm (STYLE habit 11).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from typing import List, Tuple


def stage_summary(module: str) -> str:
    """First docstring line of a stage module, without importing it ("" if none)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return ""
    try:
        with open(spec.origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    # "stage=overfit (recipe stage 3): X" reads as the others: "recipe stage 3 - X"
    first = re.sub(r"^stage=\w+\s*\((recipe stage \d+)\):\s*", r"\1 - ", first)
    return re.sub(r"^stage=\w+:\s*", "", first)


def _recipe_step(summary: str) -> float:
    m = re.search(r"recipe stage (\d+)", summary, re.IGNORECASE)
    return float(m.group(1)) if m else 0.0  # stages outside the recipe's numbering come first


@functools.lru_cache(maxsize=1)
def stage_lines() -> str:
    """'  name  summary' for every registered stage, in the recipe's order (read once a
    process: Hydra resolves the help template on every run)."""
    from runner.stages import STAGES

    rows: List[Tuple[float, str, str]] = []
    for name, module in STAGES.items():
        s = stage_summary(module)
        rows.append((_recipe_step(s), name, s))
    rows.sort()
    width = max((len(n) for _, n, _ in rows), default=0)
    return "\n".join(f"  {n.ljust(width)}  {s}" for _, n, s in rows)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("runner_stages", stage_lines, replace=True)
