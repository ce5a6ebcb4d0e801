"""Checkpoint contents: what is saved, how it is restored, and which checkpoint stands for a
run (best_checkpoint) or continues it (find_resume_checkpoint). Writing is output.RunDir's job.

A checkpoint holds only tensors and primitives, so it loads with torch.load(weights_only=True):
the config as a YAML string, RNG states as tensors/tuples, the loop state as a dict.
Checkpoints are data; a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.errors import ConfigError
from runner.loop import LoopState

FORMAT = 1


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_copy(obj: Any) -> Any:
    """A copy whose tensors are detached CPU clones: later training steps cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def make_checkpoint(
    model, optimizer, scheduler, loop_state: LoopState, config_yaml: str, meta: dict[str, Any]
) -> dict[str, Any]:
    """A snapshot of everything needed to resume, taken now (tensors cloned to the CPU), so a
    background writer can serialise it while the next epoch trains."""
    # unwrap DDP / torch.compile wrappers so the keys match a plain model
    module = getattr(model, "_orig_mod", model)
    module = getattr(module, "module", module)
    return {
        "format": FORMAT,
        "model": _cpu_copy(module.state_dict()),
        "optimizer": _cpu_copy(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": _cpu_copy(scheduler.state_dict()) if scheduler is not None else None,
        "rng": rng_state(),
        "loop": dataclasses.asdict(loop_state),
        "config": config_yaml,
        "meta": dict(meta),
    }


# runner/data.py eval_transform: timm's eval transform with crop_pct=1.0 (resize the short side
# to image_size, centre crop: nothing is cut from a square image)
EVAL_CROP_PCT = 1.0
EVAL_CROP_MODE = "center"


def usage_meta(cfg, data, original_cwd: str | None = None) -> dict[str, Any]:
    """The facts a checkpoint carries so its weights can be used without the run: class names,
    the model (timm architecture or `_target_`), and the eval preprocessing exactly as the run
    applied it (input size, channels, mean/std, resize filter, crop). Plain lists and strings:
    the checkpoint still loads with weights_only=True.

    `pipeline`: "tensor" for data held as uint8 tensors (digits, synthetic), resized with
    torch's interpolate (runner/data.py _resize_uint8) before normalising; "timm" for streamed
    images, which go through timm's eval transform (PIL resize + centre crop)."""
    from runner.data import TensorSplit

    model = cfg.model
    return {
        "class_names": [str(c) for c in data.class_names],
        "architecture": None if model.get("_target_") else str(model.name),
        "target": str(model._target_) if model.get("_target_") else None,
        "model_kwargs": _plain(model.get("kwargs") or {}),
        "channels": "L" if int(data.in_chans) == 1 else "RGB" if int(data.in_chans) == 3 else "",
        "input_size": [int(data.in_chans), int(data.image_size), int(data.image_size)],
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "interpolation": str(data.interpolation),
        "crop_pct": EVAL_CROP_PCT,
        "crop_mode": EVAL_CROP_MODE,
        "pipeline": "tensor" if isinstance(data.val, TensorSplit) else "timm",
        "data_kind": str(data.kind),
        # relative data paths (data.root) resolve from here: predict --split reads the data again
        "cwd": str(original_cwd) if original_cwd else None,
    }


def _plain(node) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def weights_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """best.pt: what it is for (the weights and the facts to use them: meta, config, when),
    sharing the snapshot's tensors (no copy); `resume` refuses it (no optimiser, no RNG)."""
    loop = ckpt["loop"]
    return {
        "format": FORMAT,
        "kind": "weights",
        "model": ckpt["model"],
        "config": ckpt["config"],
        "meta": ckpt["meta"],
        "loop": {"epoch": loop["epoch"], "step": loop["step"]},
    }


class CheckpointWriter:
    """Serialises checkpoints on a background thread, off the training thread.

    `submit` hands over a snapshot (make_checkpoint) and returns at once; at most one write is
    in flight (a second submit first waits for the previous). Each file is written atomically
    (RunDir: temp file + rename), so a kill at any moment leaves the previous complete file.
    `close` (and `wait`) block until the write is done: call it before the process exits,
    errors and signals included; a write's own error is raised there."""

    def __init__(self, run):
        self.run = run
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, files: dict[str, dict[str, Any]]) -> None:
        """files: name -> payload, written in that order (best.pt before last.pt: see
        stages.common._checkpoint_files)."""
        self.wait()
        if not self.run.enabled:
            return

        def write() -> None:
            try:
                for name, payload in files.items():
                    self.run.save_checkpoint(payload, name)
            except BaseException as e:  # noqa: BLE001 (raised on the training thread at wait)
                self._error = e

        self._thread = threading.Thread(target=write, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    close = wait


def load_checkpoint(path: Path) -> dict[str, Any]:
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
        raise ConfigError(
            f"checkpoint {path} is refused: it does not load with weights_only=True "
            f"(not a torch checkpoint, or it pickles objects beyond tensors and "
            f"primitives; checkpoints are data, never code). {detail}"
        ) from e
    except Exception as e:  # zip errors, EOF, random bytes
        raise ConfigError(
            f"checkpoint {path} is not a readable torch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if isinstance(ckpt, dict) and ckpt.get("kind") == "ensemble":  # runner/ensemble.py
        from runner.ensemble import ensemble_problems

        problems = ensemble_problems(ckpt)
        if problems:
            raise ConfigError(
                f"ensemble file {path} is malformed: {'; '.join(problems)} (stage=squeeze "
                "writes it whole: it was changed or made elsewhere); run the squeeze stage again"
            )
        return ckpt
    if not isinstance(ckpt, dict) or "model" not in ckpt or "loop" not in ckpt:
        raise ConfigError(
            f"checkpoint {path} is not a recipe-runner checkpoint "
            "(expected keys model, optimizer, loop, ...)"
        )
    problems = _shape_problems(ckpt)
    if problems:
        raise ConfigError(
            f"checkpoint {path} is malformed: {'; '.join(problems)} (the runner writes each "
            "checkpoint whole: it was changed or made elsewhere); resume from another "
            "checkpoint, or start the run again"
        )
    return ckpt


def _loop_types() -> dict:
    """LoopState field -> the types a checkpoint's loop state may hold for it."""
    out = {}
    for f in dataclasses.fields(LoopState):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[f.name] = (int, float) if isinstance(default, float) else (type(default),)
    return out


def _shape_problems(ckpt: dict) -> list:
    """What is wrong with a loaded checkpoint's structure (model, loop state, config, meta)."""
    problems = []
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        problems.append("model is not a dict of tensors")
    loop = ckpt["loop"]
    if not isinstance(loop, dict):
        problems.append(f"loop state is {type(loop).__name__}, not a dict")
    else:
        for k, types in _loop_types().items():
            v = loop.get(k)
            if k in loop and (isinstance(v, bool) or not isinstance(v, types)):
                want = " or ".join(t.__name__ for t in types)
                problems.append(f"loop.{k}={v!r:.40} is not {want}")
        if isinstance(loop.get("history"), list) and not all(
            isinstance(r, dict) for r in loop["history"]
        ):
            problems.append("loop.history is not a list of dicts")
    for key, types in (("config", (str,)), ("meta", (dict,)), ("optimizer", (dict,))):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], types):
            problems.append(f"{key} is {type(ckpt[key]).__name__}, not {types[0].__name__}")
    return problems


def restore(ckpt: dict[str, Any], path: Path, model, optimizer=None, scheduler=None) -> LoopState:
    """Put model/optimiser/scheduler/RNG back; return the loop state to continue from."""
    module = getattr(model, "_orig_mod", model)
    module = getattr(module, "module", module)
    try:
        module.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConfigError(
            f"checkpoint {path} does not fit this model (saved: "
            f"{_saved_model(ckpt.get('meta') or {})}): {_mismatch(e)}"
        ) from e
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    fields = {f.name for f in dataclasses.fields(LoopState)}
    return LoopState(**{k: v for k, v in ckpt["loop"].items() if k in fields})


def _saved_model(meta: dict[str, Any]) -> str:
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


def best_checkpoint(run_dir: Path, required: bool = False) -> Path | None:
    """The checkpoint whose weights stand for a run: checkpoints/best.pt, else last.pt; None
    when neither exists (`required`: a ConfigError naming the directory). Resuming reads
    last.pt itself (find_resume_checkpoint)."""
    for name in ("best.pt", "last.pt"):
        p = Path(run_dir) / "checkpoints" / name
        if p.is_file():
            return p
    if required:
        raise ConfigError(f"{run_dir}: no checkpoints/best.pt or last.pt")
    return None


def find_resume_checkpoint(resume, outputs: Path) -> Path | None:
    """`resume` is true (latest interrupted run under outputs/), a run dir, or a .pt file."""
    if resume is False or resume is None or str(resume).lower() in ("false", "none", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        cands = [
            p
            for p in outputs.glob("*/*/checkpoints/last.pt")
            if not (p.parent.parent / "summary.json").exists()
        ]
        if not cands:
            raise ConfigError(
                f"resume=true: no interrupted run (checkpoints/last.pt without "
                f"summary.json) under {outputs}; give resume=<run dir>"
            )
        return max(cands, key=lambda p: p.stat().st_mtime)
    p = Path(str(resume)).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise ConfigError(
            f"resume={resume!r}: no checkpoint there (expected a run directory "
            "with checkpoints/last.pt, or a .pt file)"
        )
    return p
