"""input.pretrained_norm: a pretrained model is fed inputs prepared the way it was trained.

Recipe stage 2 ("visualise just before the net") and stage 4 (pretrained models): pretrained
weights expect the normalisation, resolution and resize interpolation of their training
data. Feeding them another mean/std still runs and still learns a little, only worse: a
silent bug. timm states each model's expectation in its pretrained config;
`timm.data.resolve_model_data_config(model)` reads it (no weights needed). This check
compares it with what the data pipeline does and lists every difference with the value to
set. Pure: two descriptions in, a Verdict out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.checks import Verdict, skip

NAME = "input.pretrained_norm"


def _fmt(xs: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in xs) + "]"


def pretrained_norm(
    pretrained_cfg: Mapping[str, Any] | None,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    interpolation: str | None = None,
    pretrained: bool = True,
    tolerance: float = 0.01,
    check_size: bool = True,
) -> Verdict:
    """Compare the model's pretrained data config with the configured input pipeline.

    `pretrained_cfg`: timm's `resolve_model_data_config(model)` ({mean, std, input_size,
    interpolation, ...}). `mean`/`std`/`image_size`/`interpolation`: what the data
    pipeline uses (the values actually applied, not the config's nulls). Skip when the
    model is not pretrained (it learns whatever normalisation it is fed) or has no config.
    Warn listing each difference and what to set: mean/std per channel beyond `tolerance`,
    the square image size (when `check_size`; another size can be meant, e.g. fine-tuning
    larger) and the interpolation (when given). Channels are not compared: timm adapts the first layer's
    weights to `in_chans` (a grey pipeline is compared with the channel average). Pass when
    they agree.
    """
    if not pretrained:
        return skip(NAME, "the model is not pretrained: it learns the normalisation it is fed")
    if not pretrained_cfg:
        return skip(NAME, "the model has no pretrained data config to compare with")
    want_mean = [float(x) for x in pretrained_cfg.get("mean", ())]
    want_std = [float(x) for x in pretrained_cfg.get("std", ())]
    input_size = tuple(pretrained_cfg.get("input_size", ()))
    want_interp = pretrained_cfg.get("interpolation")
    expected = (
        f"mean {_fmt(want_mean)}, std {_fmt(want_std)}"
        + (f", {input_size[-1]}x{input_size[-2]} px" if len(input_size) == 3 else "")
        + (f", {want_interp} resize" if want_interp else "")
    )
    diffs: list[str] = []
    fixes: list[str] = []

    def per_channel(key: str, have: Sequence[float], want: list[float]) -> None:
        have = [float(x) for x in have]
        if not want:
            return
        if len(have) == 1 and len(want) > 1:  # grey pipeline: compare with the channel mean
            want = [sum(want) / len(want)]
        if len(have) != len(want) or any(abs(a - b) > tolerance for a, b in zip(have, want)):
            diffs.append(f"{key} {_fmt(have)} but the weights expect {_fmt(want)}")
            fixes.append(f"data.{key}={_fmt(want)}".replace(" ", ""))

    per_channel("mean", mean, want_mean)
    per_channel("std", std, want_std)
    if len(input_size) == 3:
        _, want_h, want_w = (int(v) for v in input_size)
        if check_size and (int(image_size) != want_h or int(image_size) != want_w):
            diffs.append(
                f"image size {image_size} px but the weights were trained at {want_w}x{want_h} px"
            )
            fixes.append(
                f"data.image_size={want_h} (or keep {image_size} if fine-tuning at "
                "another size is intended)"
            )
    if interpolation and want_interp and str(interpolation) != str(want_interp):
        diffs.append(f"{interpolation} resize but the weights expect {want_interp}")
        fixes.append(f"the resize interpolation to {want_interp}")
    details = {
        "pretrained": {
            "mean": want_mean,
            "std": want_std,
            "input_size": list(input_size),
            "interpolation": want_interp,
        },
        "configured": {
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "image_size": int(image_size),
            "interpolation": interpolation,
        },
        "differences": diffs,
    }
    if diffs:
        return Verdict(
            NAME,
            "warn",
            value=len(diffs),
            expected=expected,
            message="the input pipeline differs from what the pretrained weights were trained "
            "on: " + "; ".join(diffs) + ". Set " + ", ".join(fixes),
            details=details,
        )
    return Verdict(
        NAME,
        "pass",
        value=0,
        expected=expected,
        message="the inputs are prepared the way the pretrained weights expect",
        details=details,
    )
