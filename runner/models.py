"""Model builders: any timm model by name, or a custom callable; plus the recipe's tiny CNN."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from runner.errors import ConfigError

log = logging.getLogger(__name__)


# The model.* keys build_model reads for each kind of model: a timm model by name
# (model=timm, model=resnet18), or a `_target_` callable (model=custom, model=tiny_cnn).
# config.validate() refuses a key the user set that the selected kind does not read, naming
# the option that would (`model.name` with model=tiny_cnn): never train another model than
# the one named.
MODEL_KEYS = {
    "timm": ("name", "kwargs", "pretrained", "pretrained_file", "drop_rate", "drop_path_rate"),
    "custom": ("_target_", "kwargs", "drop_rate"),
}


def model_kind(cfg) -> str:
    """`custom` when the `model` node names a callable, else `timm` (as build_model decides)."""
    return "custom" if cfg.get("_target_") else "timm"


def input_size_problem(name: str, kwargs, image_size: int) -> str | None:
    """A message when timm model `name` cannot take image_size x image_size inputs, else None.

    Models that cut the input into patches (ViT, DeiT, Swin, EVA, ...) need a multiple of the
    patch size, and most are built for one size (224) unless given img_size. The model is
    built on the meta device (no memory, ~0.1 s) with the user's model.kwargs to find out.
    """
    import timm

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, **dict(kwargs or {}))
    except Exception:  # noqa: BLE001 -- build_model reports build errors with their context
        return None
    pe = getattr(m, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if pe is None or not patch:
        return None
    p = int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch)
    if image_size % p and not getattr(pe, "dynamic_img_pad", False):
        lo, hi = max(p, image_size // p * p), (image_size // p + 1) * p
        return (
            f"data.image_size={image_size} is not a multiple of the patch size {p} of "
            f"model.name={name!r} (it cuts images into {p}x{p} patches); use "
            f"data.image_size={lo} or {hi}"
        )
    fixed = getattr(pe, "img_size", None)
    dynamic = getattr(m, "dynamic_img_size", False) or getattr(pe, "dynamic_img_size", False)
    if (
        fixed
        and getattr(pe, "strict_img_size", False)
        and not dynamic
        and tuple(fixed) != (image_size, image_size)
    ):
        return (
            f"model.name={name!r} is built for {fixed[0]}x{fixed[1]} inputs but "
            f"data.image_size={image_size}; add +model.kwargs.img_size={image_size} (timm "
            f"resizes its position embeddings) or data.image_size={fixed[0]}"
        )
    return None


class TinyCNN(nn.Module):
    """A small convnet you cannot get wrong (recipe stage 2): conv-relu-pool x2, then linear."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.0
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x).flatten(1)))


def build_model(
    cfg, num_classes: int, in_chans: int, original_cwd: Optional[str] = None
) -> nn.Module:
    """cfg is the `model` node; num_classes/in_chans come from the data, never from YAML."""
    base = Path(original_cwd) if original_cwd else Path.cwd()
    if cfg._target_:
        from runner.targets import resolve_target

        fn = resolve_target(cfg._target_, "model._target_")
        kwargs = dict(cfg.kwargs)
        if cfg.drop_rate:
            kwargs.setdefault("drop_rate", cfg.drop_rate)
        model = fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model._target_={cfg._target_!r} returned {type(model).__name__}; "
                "expected an nn.Module"
            )
        return model
    import timm

    kwargs = dict(num_classes=num_classes, in_chans=in_chans, **dict(cfg.kwargs))
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:  # only models with residual branches accept it
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.pretrained:
        kwargs["pretrained"] = True
        if cfg.pretrained_file:
            # timm's own loading path with a local file: classifier and input conv are adapted
            kwargs["pretrained_cfg_overlay"] = dict(
                file=str((base / cfg.pretrained_file).expanduser())
            )
    try:
        return timm.create_model(cfg.name, **kwargs)
    except TypeError as e:
        raise ConfigError(
            f"model.name={cfg.name!r} does not accept these options ({e}); "
            "drop model.drop_path_rate / model.kwargs it does not know"
        ) from e
    except (RuntimeError, OSError) as e:
        if cfg.pretrained:
            raise ConfigError(
                f"model.pretrained=true for {cfg.name!r} could not load weights ({e}); "
                "no downloads here: set model.pretrained_file to a local .pth/.safetensors"
            ) from e
        raise


def final_linear(model: nn.Module) -> Optional[nn.Linear]:
    """The classifier layer: timm's get_classifier(), else the last nn.Linear in the module."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=32)
def _timm_data_config(name: str, kwargs_json: str) -> Optional[dict]:
    import json

    import timm
    from timm.data import resolve_model_data_config

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, **json.loads(kwargs_json))
        return dict(resolve_model_data_config(m))
    except Exception:  # noqa: BLE001 -- build_model reports a bad name or kwargs with context
        return None


def pretrained_data_config(model) -> Optional[dict]:
    """timm's data config (mean, std, input_size, interpolation, crop_pct) of a pretrained
    timm `model` node, else None (not pretrained, a custom model, an unknown name). Read from
    a model built on the meta device: no weights, no memory, ~10 ms after timm's import."""
    if (
        model is None
        or not model.get("pretrained")
        or model.get("_target_")
        or not model.get("name")
    ):
        return None
    import json

    from omegaconf import OmegaConf

    kwargs = model.get("kwargs") or {}
    if OmegaConf.is_config(kwargs):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    return _timm_data_config(str(model.name), json.dumps(dict(kwargs), sort_keys=True))
