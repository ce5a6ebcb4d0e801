"""Checkpoint contents: what is saved and how it is restored. Writing is output.RunDir's job.

A checkpoint holds only tensors and primitives, so it loads with torch.load(weights_only=True):
the config as a YAML string, RNG states as tensors/tuples, the loop state as a dict.
Checkpoints are data; a file that needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from runner.errors import ConfigError
from runner.loop import LoopState

FORMAT = 1


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(model, optimizer, scheduler, loop_state: LoopState, config_yaml: str,
                    meta: Dict[str, Any]) -> Dict[str, Any]:
    # unwrap DDP / torch.compile wrappers so the keys match a plain model
    module = getattr(model, "_orig_mod", model)
    module = getattr(module, "module", module)
    return {
        "format": FORMAT,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "loop": dataclasses.asdict(loop_state),
        "config": config_yaml,
        "meta": dict(meta),
    }


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load safely; anything that is not our checkpoint becomes a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        at = next((i for i, ln in enumerate(lines) if "Unpickler error:" in ln), None)
        detail = ""
        if at is not None:
            detail = lines[at].split("Unpickler error:", 1)[1].strip()
            if not detail and at + 1 < len(lines):
                detail = lines[at + 1]
            detail = detail.split(". Please use")[0]
        raise ConfigError(f"checkpoint {path} is refused: it does not load with weights_only=True "
                          f"(not a torch checkpoint, or it pickles objects beyond tensors and "
                          f"primitives; checkpoints are data, never code). {detail}") from e
    except Exception as e:  # zip errors, EOF, random bytes
        raise ConfigError(f"checkpoint {path} is not a readable torch checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "loop" not in ckpt:
        raise ConfigError(f"checkpoint {path} is not a recipe-runner checkpoint "
                          "(expected keys model, optimizer, loop, ...)")
    return ckpt


def restore(ckpt: Dict[str, Any], path: Path, model, optimizer=None, scheduler=None) -> LoopState:
    """Put model/optimiser/scheduler/RNG back; return the loop state to continue from."""
    module = getattr(model, "_orig_mod", model)
    module = getattr(module, "module", module)
    try:
        module.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {path} does not fit this model (saved: "
                          f"{_saved_model(ckpt.get('meta') or {})}): {_mismatch(e)}") from e
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    fields = {f.name for f in dataclasses.fields(LoopState)}
    return LoopState(**{k: v for k, v in ckpt["loop"].items() if k in fields})


def _saved_model(meta: Dict[str, Any]) -> str:
    parts = [str(meta.get("model") or "a model of unknown name")]
    if meta.get("num_classes") is not None:
        parts.append(f"{meta['num_classes']} classes")
    if meta.get("in_chans") is not None:
        parts.append(f"{meta['in_chans']} input channel(s)")
    return ", ".join(parts)


def _mismatch(e: BaseException) -> str:
    """load_state_dict's first concrete difference (its first line only says there are some)."""
    lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
    if not lines:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    first = lines[0].replace("torch.Size(", "(")
    if len(first) > 300:
        first = first[:300] + " ..."
    return first + (f" (and {len(lines) - 1} more difference(s))" if len(lines) > 1 else "")


def find_resume_checkpoint(resume, outputs: Path) -> Optional[Path]:
    """`resume` is true (latest interrupted run under outputs/), a run dir, or a .pt file."""
    if resume is False or resume is None or str(resume).lower() in ("false", "none", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        cands = [p for p in outputs.glob("*/*/checkpoints/last.pt")
                 if not (p.parent.parent / "summary.json").exists()]
        if not cands:
            raise ConfigError(f"resume=true: no interrupted run (checkpoints/last.pt without "
                              f"summary.json) under {outputs}; give resume=<run dir>")
        return max(cands, key=lambda p: p.stat().st_mtime)
    p = Path(str(resume)).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise ConfigError(f"resume={resume!r}: no checkpoint there (expected a run directory "
                          "with checkpoints/last.pt, or a .pt file)")
    return p
