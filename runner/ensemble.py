"""Squeeze's ensemble as one loadable model: `ensemble.pt` in the squeeze run directory.

stage=squeeze scores the ensemble of its best k candidates by averaging their logits
(runner/stages/squeeze.py ensemble_scores). The file holds what rebuilding exactly that needs:
each member's weights, config and facts (the member's best.pt, copied: the file is whole
without the member runs), and how it averages (`combine`). It loads with
torch.load(weights_only=True) like every checkpoint, and `Ensemble` is the nn.Module that
predict, export and runner.load(...).model() build from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

# the members' logits averaged, as squeeze scored the ensemble (not their probabilities)
COMBINE = "mean_logits"


class Ensemble(nn.Module):
    """The members' mean logits. `affine[i]`: (scale, shift) that turns an input normalised
    with the ensemble's mean/std into member i's own normalisation (a member trained with
    other input statistics), or None when they are the same."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        affine: Optional[Sequence[Optional[tuple]]] = None,
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        self._renorm: List[bool] = []
        for i, a in enumerate(affine or [None] * len(members)):
            self._renorm.append(a is not None)
            scale, shift = a if a is not None else (torch.ones(1), torch.zeros(1))
            self.register_buffer(f"scale{i}", torch.as_tensor(scale).view(1, -1, 1, 1).float())
            self.register_buffer(f"shift{i}", torch.as_tensor(shift).view(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for i, m in enumerate(self.members):
            xi = (
                x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
                if self._renorm[i]
                else x
            )
            logits.append(m(xi))
        return mean_logits(logits)


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's output (COMBINE): its members' logits averaged, in fp32."""
    return torch.stack([lg.float() for lg in logits]).mean(0)


def member_affine(meta: Dict[str, Any], member_meta: Dict[str, Any]) -> Optional[tuple]:
    """(scale, shift) from the ensemble's normalisation to a member's, None when equal."""
    m0, s0 = meta.get("mean"), meta.get("std")
    m1, s1 = member_meta.get("mean"), member_meta.get("std")
    if not (m0 and s0 and m1 and s1) or (list(m0) == list(m1) and list(s0) == list(s1)):
        return None
    m0, s0, m1, s1 = (torch.tensor(v, dtype=torch.float32) for v in (m0, s0, m1, s1))
    # member input = (raw - m1) / s1 with raw = x * s0 + m0
    return s0 / s1, (m0 - m1) / s1


def ensemble_payload(
    members: Sequence[Path],
    fill_meta,
    val_acc: Optional[float] = None,
    val_loss: Optional[float] = None,
) -> Dict[str, Any]:
    """ensemble.pt's content for these member run directories (best first). `fill_meta(cfg)`:
    the usage facts (runner/checkpoint.py usage_meta) of a member whose checkpoint predates
    them. The ensemble's own meta (class names, preprocessing) is its first member's."""
    from omegaconf import OmegaConf

    from runner.checkpoint import FORMAT, best_checkpoint, load_checkpoint

    out: List[Dict[str, Any]] = []
    for d in members:
        path = best_checkpoint(Path(d), required=True)
        ck = load_checkpoint(path)
        meta = dict(ck.get("meta") or {})
        if "class_names" not in meta:
            meta.update(fill_meta(OmegaConf.create(ck["config"])))
        out.append(
            {
                "run": str(d),
                "weights": str(path),
                "model": ck["model"],
                "config": ck["config"],
                "meta": meta,
            }
        )
    first = out[0]
    return {
        "format": FORMAT,
        "kind": "ensemble",
        "combine": COMBINE,
        "members": out,
        "config": first["config"],
        "meta": {**first["meta"], "model": f"ensemble of {len(out)}", "members": len(out)},
        "val_acc": val_acc,
        "val_loss": val_loss,
    }


def ensemble_problems(ck: Dict[str, Any]) -> List[str]:
    """What is wrong with a loaded ensemble.pt's structure."""
    members = ck.get("members")
    if ck.get("combine") != COMBINE:
        return [f"combine={ck.get('combine')!r} is not {COMBINE!r}"]
    if not isinstance(members, list) or not members:
        return ["it lists no members"]
    problems = []
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            problems.append(f"members[{i}] is not a dict")
            continue
        sd = m.get("model")
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            problems.append(f"members[{i}].model is not a dict of tensors")
        if not isinstance(m.get("config"), str) or not isinstance(m.get("meta"), dict):
            problems.append(f"members[{i}] lacks its config or meta")
    return problems
