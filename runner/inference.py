"""A run's final model, loaded with what using it needs: the part predict and export share.

`load_final(run_dir)` asks the run's stage what its final model is (runner/lineage.py
outcome: a run's best.pt, a ladder's best rung, a study's best trial, squeeze's adopted model,
a recipe's final model; squeeze's ensemble is one file, runner/ensemble.py), refuses a run
that has not finished, and builds the model as the run built it, in eval mode, with its class
names and its exact eval preprocessing (`Preprocess`, from the checkpoint's meta:
runner/checkpoint.py usage_meta; a checkpoint written before those facts falls back to the
run's summary.json and config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.errors import ConfigError

PathLike = Union[str, Path]
# the statuses of a run whose final model stands (a run stopped by its early-stopping rule is
# finished; a NaN/Inf stop, a failure, a pruned trial or a killed run is not)
USABLE = ("finished", "stopped_early")
# data kinds held as uint8 tensors (runner/data.py TensorSplit): resized by torch, not PIL
TENSOR_KINDS = ("digits", "synthetic")


@dataclass
class Preprocess:
    """The eval preprocessing of a run, as data (timm's pretrained-config names)."""

    input_size: List[int]  # [channels, height, width]
    mean: List[float]
    std: List[float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    pipeline: str = "timm"  # "tensor": torch resize of uint8 tensors (digits, synthetic)

    @property
    def channels(self) -> int:
        return int(self.input_size[0])

    @property
    def mode(self) -> str:
        """The PIL mode an image file is converted to before the transform."""
        return "L" if self.channels == 1 else "RGB"

    def transform(self):
        """PIL image -> the normalised float tensor [C, H, W] the net saw in the run's eval."""
        from runner.data import _resize_uint8, eval_transform

        size = int(self.input_size[-1])
        if self.pipeline == "tensor":
            # as runner/data.py _tensor_bundle made the run's images: uint8, torch resize
            mean = torch.tensor(self.mean).view(-1, 1, 1)
            std = torch.tensor(self.std).view(-1, 1, 1)
            interp = self.interpolation

            def tensor_tf(img):
                from torchvision.transforms.functional import pil_to_tensor

                x = pil_to_tensor(img.convert(self.mode))
                x = _resize_uint8(x[None], size, interp)[0]
                return (x.float() / 255.0 - mean) / std

            return tensor_tf
        tf = eval_transform(size, tuple(self.mean), tuple(self.std), self.interpolation)
        return lambda img: tf(img.convert(self.mode))


@dataclass
class FinalModel:
    """A loaded final model and the facts to use it."""

    module: nn.Module  # eval mode, on `device`
    file: Path  # the checkpoint or ensemble file it came from
    kind: str  # "model" or "ensemble"
    class_names: List[str]
    pre: Preprocess
    config: DictConfig  # the run's (an ensemble's: its first member's) config
    meta: Dict[str, Any]
    device: torch.device
    members: List[Dict[str, Any]] = field(default_factory=list)  # an ensemble's (run, weights)
    run_dir: Optional[Path] = None
    stage: Optional[str] = None
    reported_acc: Optional[float] = None  # the val accuracy the run reports for this model
    reported_test_acc: Optional[float] = None  # its test accuracy (scored once), if any
    what: str = ""  # what the stage says it is (its outcome's note)

    @property
    def architecture(self) -> Optional[str]:
        """The timm model name, None for a custom `_target_` model or an ensemble."""
        if self.kind == "ensemble":
            return None
        return self.meta.get("architecture") or (
            None if self.config.model.get("_target_") else str(self.config.model.name)
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def precision(self) -> str:
        """The run's trainer.precision resolved for this device (as its eval ran)."""
        from runner.stages.common import input_path

        t = self.config.get("trainer") or {}
        return input_path(str(t.get("precision", "fp32")), t.get("channels_last"), self.device)[0]


def complete_meta(meta: Dict[str, Any], cfg: DictConfig, summary: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's meta with the usage facts filled in from the run's summary.json `data`
    and config, for checkpoints written before they were saved; a fact nowhere to be found is
    a ConfigError naming it."""
    if "class_names" in meta and "mean" in meta:
        return meta
    data = summary.get("data") or {}
    out = dict(meta)
    n = meta.get("num_classes") or data.get("num_classes")
    size = meta.get("image_size") or data.get("image_size") or cfg.data.get("image_size")
    chans = meta.get("in_chans") or data.get("in_chans")
    out.setdefault("class_names", data.get("class_names") or [str(i) for i in range(int(n or 0))])
    out.setdefault("mean", data.get("mean"))
    out.setdefault("std", data.get("std"))
    out.setdefault("interpolation", data.get("interpolation") or cfg.data.get("interpolation"))
    out.setdefault("input_size", [chans, size, size] if chans and size else None)
    kind = data.get("kind") or cfg.data.get("kind")
    out.setdefault("pipeline", "tensor" if kind in TENSOR_KINDS else "timm")
    out.setdefault("data_kind", kind)
    missing = [k for k in ("mean", "std", "input_size") if not out.get(k)]
    if missing or not out["class_names"]:
        raise ConfigError(
            f"the checkpoint and the run's summary.json do not say the model's "
            f"{', '.join(missing or ['class names'])}: train the run again with this version "
            "(its checkpoints carry what using them needs)"
        )
    return out


def preprocess_of(meta: Dict[str, Any]) -> Preprocess:
    return Preprocess(
        input_size=[int(v) for v in meta["input_size"]],
        mean=[float(v) for v in meta["mean"]],
        std=[float(v) for v in meta["std"]],
        interpolation=str(meta.get("interpolation") or "bilinear"),
        crop_pct=float(meta.get("crop_pct") or 1.0),
        crop_mode=str(meta.get("crop_mode") or "center"),
        pipeline=str(meta.get("pipeline") or "timm"),
    )


def _build(cfg: DictConfig, meta: Dict[str, Any], state: Dict[str, Any], where: str, trust: bool):
    """The model a checkpoint's config names, built as the run built it, weights loaded."""
    from runner.lineage import flatten
    from runner.models import build_model
    from runner.targets import refuse_untrusted, untrusted_code

    stored = flatten({"model": OmegaConf.to_container(cfg.model, resolve=False)})
    refuse_untrusted(untrusted_code(stored, {}), f"{where} (its stored config)", trust)
    mcfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    if mcfg.get("pretrained"):  # the weights come from the checkpoint: load no others
        mcfg.pretrained = False
    model = build_model(mcfg, len(meta["class_names"]), int(meta["input_size"][0]), meta.get("cwd"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(
            f"{where}: its weights do not fit the model its config builds: {e}"
        ) from e
    return model.eval()


def load_model_file(
    path: PathLike,
    summary: Optional[Dict[str, Any]] = None,
    device: Union[str, torch.device] = "cpu",
    trust_run_configs: bool = False,
) -> FinalModel:
    """A checkpoint (best.pt, last.pt) or an ensemble file (ensemble.pt), loaded."""
    from runner.checkpoint import load_checkpoint
    from runner.ensemble import Ensemble, member_affine

    path = Path(path).expanduser().resolve()
    dev = resolve(device)
    ck = load_checkpoint(path)  # weights_only; a malformed file: ConfigError naming it
    summary = summary or {}
    if ck.get("kind") == "ensemble":
        meta = dict(ck["meta"])
        mods, affine = [], []
        for i, m in enumerate(ck["members"]):
            mcfg = OmegaConf.create(m["config"])
            mmeta = complete_meta(dict(m["meta"]), mcfg, {})
            where = f"{path} (member {i + 1}, {m.get('run')})"
            mods.append(_build(mcfg, mmeta, m["model"], where, trust_run_configs))
            affine.append(member_affine(meta, mmeta))
        module = Ensemble(mods, affine)
        cfg = OmegaConf.create(ck["config"])
        members = [{"run": m.get("run"), "weights": m.get("weights")} for m in ck["members"]]
        kind = "ensemble"
    else:
        cfg = OmegaConf.create(ck["config"])
        meta = complete_meta(dict(ck.get("meta") or {}), cfg, summary)
        module = _build(cfg, meta, ck["model"], str(path), trust_run_configs)
        members, kind = [], "model"
    return FinalModel(
        module=module.to(dev).eval(),
        file=path,
        kind=kind,
        class_names=[str(c) for c in meta["class_names"]],
        pre=preprocess_of(meta),
        config=cfg,
        meta=meta,
        device=dev,
        members=members,
        reported_acc=ck.get("val_acc") if kind == "ensemble" else None,
    )


def resolve(device: Union[str, torch.device]) -> torch.device:
    """`auto`: the GPU when there is one; else the named device (checked)."""
    if isinstance(device, torch.device):
        return device
    from runner.stages.common import resolve_device

    return resolve_device(str(device))


def final_model_file(run_dir: PathLike):
    """(the final model's file, the run's record, what the stage says it is) of a finished
    run; a ConfigError naming the directory for a run that has not finished or has no model."""
    from runner.jobs import RunRecord
    from runner.lineage import outcome

    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise ConfigError(f"{d}: not a run directory (no such folder)")
    rec = RunRecord.read(d)
    if rec.status not in USABLE:
        why = f": {rec.error}" if rec.error else ""
        raise ConfigError(
            f"{d}: this run has not finished (status {rec.status}{why}); it has no final model "
            "to use: finish it first (python -m runner resume=<dir> continues an interrupted run)"
        )
    o = outcome(d)  # the stage's own answer; a missing piece is a ConfigError naming it
    f = o.model or o.weights
    if f is None or not Path(f).is_file():
        raise ConfigError(
            f"{d}: this {rec.stage or ''} run has no model weights "
            f"({f or 'checkpoints/best.pt'} is missing): nothing to predict with or export"
        )
    return Path(f), rec, o.note


def trained_run(file: Path) -> Optional[Path]:
    """The run directory a checkpoint file was trained in (<run>/checkpoints/<name>.pt);
    None for a file elsewhere (squeeze's ensemble.pt)."""
    return file.parent.parent if file.parent.name == "checkpoints" else None


def load_final(
    run_dir: PathLike,
    device: Union[str, torch.device] = "cpu",
    trust_run_configs: bool = False,
) -> FinalModel:
    """A run's final model (a run directory), or a model file itself (best.pt, ensemble.pt)."""
    p = Path(run_dir).expanduser().resolve()
    if p.is_file():
        return load_model_file(p, None, device, trust_run_configs)
    f, rec, note = final_model_file(p)
    from runner import jobs

    run = trained_run(f)
    summary = (jobs.summary(run) if run is not None else {}) or rec.summary
    fm = load_model_file(f, summary, device, trust_run_configs)
    fm.run_dir, fm.stage, fm.what = p, rec.stage, note
    fm.reported_acc = rec.accuracy
    t = rec.summary.get("test_acc")
    fm.reported_test_acc = float(t) if isinstance(t, (int, float)) else None
    return fm
