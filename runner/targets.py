"""Resolving `_target_` dotted paths from configs, refusing dangerous callables.

Configs are code (a `_target_` runs whatever it names), but a typo or a pasted config
should never reach os.system & co. by accident: those are refused with a clear error.
"""

from __future__ import annotations

import importlib
from typing import Callable

from runner.errors import ConfigError

# modules/callables a model or dataset factory never needs (Hydra's instantiate has a similar list)
_BLOCKED_PREFIXES = (
    "os.",
    "posix.",
    "nt.",
    "subprocess.",
    "shutil.",
    "sys.",
    "builtins.",
    "pty.",
    "socket.",
    "importlib.",
    "runpy.",
    "pickle.",
    "marshal.",
    "ctypes.",
    "multiprocessing.",
    "code.",
)
_BLOCKED_NAMES = {
    "eval",
    "exec",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "input",
    "breakpoint",
}


def resolve_target(path: str, key: str) -> Callable:
    """Import `package.module.callable` (or `package.module:callable`) for config key `key`."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{key} is empty; expected a dotted path like 'my_pkg.models.make'")
    path = path.strip().replace(":", ".")
    if (
        path.startswith(_BLOCKED_PREFIXES)
        or path.split(".")[-1] in _BLOCKED_NAMES
        or path in {p.rstrip(".") for p in _BLOCKED_PREFIXES}
    ):
        raise ConfigError(
            f"{key}={path!r} is refused: it names a system/eval callable, "
            "not a model or dataset factory"
        )
    mod_name, _, attr = path.rpartition(".")
    if not mod_name:
        raise ConfigError(f"{key}={path!r} is not a dotted path; expected 'module.callable'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        # maybe a nested attribute: module.Class.method
        outer, _, inner = mod_name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(outer), inner) if outer else None
        except (ImportError, AttributeError):
            obj = None
        if obj is None:
            raise ConfigError(
                f"{key}={path!r}: cannot import module {mod_name!r} ({e}); "
                "is it on PYTHONPATH (run from your experiment repo's root)?"
            ) from e
    fn = getattr(obj, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{key}={path!r}: {mod_name!r} has no callable {attr!r}")
    return fn
