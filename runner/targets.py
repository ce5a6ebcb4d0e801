"""Resolving `_target_` dotted paths from configs, refusing dangerous callables, and which
configs may name code at all.

Configs are code (a `_target_` runs whatever it names), but a typo or a pasted config
should never reach os.system & co. by accident: those are refused with a clear error, by
what the path resolves to (os.system re-exported by another module is still os.system).

Run directories and checkpoints are data. A `_target_` that only they name (a `from=`
source's config.yaml, the overrides `resume=` reapplies, the config stored in a checkpoint)
is refused unless the packaged configs or the user's own config name the same value, or the
user sets `trust_run_configs=true` (README "Trust model").
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

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


# modules whose functions and classes a factory never is: checked on the resolved object
_BLOCKED_MODULES = {p.rstrip(".") for p in _BLOCKED_PREFIXES} | {"_posixsubprocess", "io", "_io"}


def _blocked_object(fn) -> bool:
    """fn (or the module/object it is bound to) belongs to a blocked module, whatever path
    reached it: `posix.system`, `mymod.system` after `from os import system`, a bound method
    of os.environ."""
    import builtins
    from types import ModuleType

    names = [getattr(fn, "__module__", None)]
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, ModuleType):  # a builtin function: its module
        names.append(owner.__name__)
    elif isinstance(owner, type):  # a classmethod
        names.append(owner.__module__)
    elif owner is not None:  # a bound method: its object's class
        names.append(type(owner).__module__)
    if any(isinstance(n, str) and n.split(".")[0] in _BLOCKED_MODULES for n in names):
        return True
    return any(fn is getattr(builtins, n, None) for n in _BLOCKED_NAMES)


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
    if _blocked_object(fn):
        where = getattr(fn, "__module__", None) or getattr(
            getattr(fn, "__self__", None), "__name__", "?"
        )
        raise ConfigError(
            f"{key}={path!r} is refused: it is {where}.{getattr(fn, '__name__', attr)}, a "
            "system/eval callable, not a model or dataset factory"
        )
    return fn


# ----------------------------------------------------------------------------- run configs
TRUST_KEY = "trust_run_configs"


def names_code(override_or_key: str) -> bool:
    """An override (or dotted key) that makes the runner import code: a `_target_`, a Hydra
    search path (config files of another folder) or Hydra callbacks."""
    from runner.config import override_key

    key = override_key(override_or_key) if "=" in override_or_key else override_or_key
    key = key.lstrip("~+")
    parts = key.replace("/", ".").split(".")
    return "_target_" in parts or parts[:2] in (["hydra", "searchpath"], ["hydra", "callbacks"])


def trusts_run_configs(argv) -> bool:
    """The command sets trust_run_configs=true."""
    for a in argv:
        k, _, v = str(a).lstrip("+").partition("=")
        if k == TRUST_KEY and v.strip().lower() in ("true", "1", "yes"):
            return True
    return False


def packaged_targets() -> set:
    """The `_target_` values of the packaged configs (conf/): code that ships with the runner."""
    import re

    from runner.__main__ import CONF_DIR

    found = set()
    for f in Path(CONF_DIR).rglob("*.yaml"):
        found.update(re.findall(r"^\s*_target_:\s*['\"]?([\w.:]+)", f.read_text(), re.M))
    return found


def untrusted_code(leaves: Mapping[str, Any], own: Mapping[str, Any]) -> Dict[str, str]:
    """Of a run directory's config (dotted leaves), the `_target_`s neither the packaged configs
    nor the user's own config (`own`, dotted leaves) name with that value."""
    code = {
        k: v
        for k, v in leaves.items()
        if k.split(".")[-1] == "_target_" and isinstance(v, str) and v and v != "???"
    }
    if not code:
        return {}
    ours = packaged_targets()
    return {k: v for k, v in code.items() if v not in ours and own.get(k) != v}


def refuse_untrusted(code: Mapping[str, str], where: str, trusted: bool) -> None:
    """A ConfigError naming the code `where` (a file) names, unless the user trusts it."""
    if not code or trusted:
        return
    named = ", ".join(f"{k}={v}" for k, v in code.items())
    raise ConfigError(
        f"{where} names code: {named}. Code named only by a run directory or a checkpoint is "
        f"not run (run files are data, anyone may have written them): give "
        f"{' '.join(f'{k}={v}' for k, v in code.items())} yourself if you mean it, or set "
        f"{TRUST_KEY}=true to trust what this run names"
    )
