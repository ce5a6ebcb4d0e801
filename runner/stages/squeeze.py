"""stage=squeeze (recipe stage 6, ensemble part): average the logits of the best k models.

Candidates come from `stage.params.from` (a regularize run's `rungs/`, a sweep's trial dirs,
or one run dir) and `stage.params.runs`; the k with the best recorded val accuracy are
reloaded from `checkpoints/best.pt` (else `last.pt`) with the config saved in the checkpoint,
evaluated on the full validation set, and their averaged logits scored as the ensemble.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from runner.checks import Verdict
from runner.errors import ConfigError
from runner.stages.common import Context, finish, stage_params

log = logging.getLogger("runner")

DEFAULTS: dict[str, Any] = {"from": None, "runs": [], "k": 3}


def params(cfg) -> dict[str, Any]:
    from runner.stages import overfit, regularize

    return stage_params(cfg, DEFAULTS, inherited=[*overfit.DEFAULTS, *regularize.DEFAULTS])


def ensemble_scores(member_logits: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
    """Each member's accuracy and the averaged-logits ensemble's accuracy and loss."""
    targets = targets.long()
    accs = [float((lg.argmax(1) == targets).float().mean()) for lg in member_logits]
    mean = torch.stack([lg.float() for lg in member_logits]).mean(0)
    return {"member_acc": accs, "ensemble_acc": float((mean.argmax(1) == targets).float().mean()),
            "ensemble_loss": float(torch.nn.functional.cross_entropy(mean, targets)),
            "member_loss": [float(torch.nn.functional.cross_entropy(lg.float(), targets))
                            for lg in member_logits]}


def _is_run(d: Path) -> bool:
    return (d / "summary.json").exists() and (d / "checkpoints").is_dir()


def candidates(sources: list[Path]) -> list[Path]:
    """Run dirs under each source: the source itself, its rungs/<k>-*/, or its sweep trials."""
    out: list[Path] = []
    for s in sources:
        if not s.is_dir():
            raise ConfigError(f"stage=squeeze: {s} is not a directory")
        found = sorted(p for p in (s / "rungs").glob("*") if _is_run(p)) if (s / "rungs").is_dir() else []
        found = found or sorted(p for p in s.glob("*") if p.is_dir() and _is_run(p))
        if not found and _is_run(s):
            found = [s]
        if not found:
            raise ConfigError(f"stage=squeeze: no finished run with checkpoints in {s}")
        out += [p for p in found if p not in out]
    return out


def _recorded_acc(d: Path) -> float:
    import json

    s = json.loads((d / "summary.json").read_text())
    acc = s.get("best_val_acc", s.get("val_acc"))
    return float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else -1.0


def member_logits(run_dir: Path, original_cwd: str, device: torch.device):
    """(logits, targets, config, fingerprint) of a run's best checkpoint on its full val set."""
    from runner.checkpoint import load_checkpoint
    from runner.data import build_data
    from runner.loop import evaluate
    from runner.models import build_model

    ck = run_dir / "checkpoints" / "best.pt"
    ck = ck if ck.exists() else run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ck)
    mcfg = OmegaConf.create(ckpt["config"])
    data = build_data(mcfg.data, original_cwd)
    model = build_model(mcfg.model, data.num_classes, data.in_chans, original_cwd)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    loader = data.val.loader(int(mcfg.trainer.batch_size) * 2, False, int(mcfg.seed), device,
                             train=False, num_workers=0)
    ev = evaluate(model, loader, device, keep_logits=True)
    return ev.logits.cpu(), ev.targets.cpu(), mcfg, data


def run(cfg, ctx: Context) -> int:
    from runner.report import esc, table
    from runner.stages.common import setup_runtime

    p = params(cfg)
    cwd = Path(ctx.original_cwd)
    sources = ([cwd / str(p["from"])] if p["from"] else []) + [cwd / str(r) for r in p["runs"] or []]
    if not sources:
        raise ConfigError("stage=squeeze needs stage.params.from=<regularize or sweep dir> "
                          "or stage.params.runs=[<run dir>, ...]")
    device = setup_runtime(cfg)
    cands = sorted(candidates(sources), key=_recorded_acc, reverse=True)
    k = max(1, int(p["k"]))
    members = cands[:k]
    log.info("squeeze: %d candidate run(s); ensemble of the best %d", len(cands), len(members))
    logits, rows, targets, data = [], [], None, None
    for d in members:
        lg, tg, mcfg, mdata = member_logits(d, ctx.original_cwd, device)
        if targets is None:
            targets, data = tg, mdata
        elif mdata.fingerprint != data.fingerprint or not torch.equal(tg, targets):
            raise ConfigError(f"stage=squeeze: {d} was validated on another data set/split "
                              "than the first member; an ensemble needs one validation set")
        logits.append(lg)
        rows.append({"member": str(d), "model": mcfg.model.get("_target_") or mcfg.model.name,
                     "recorded_val_acc": _recorded_acc(d)})
    sc = ensemble_scores(logits, targets)
    for r, a, l_ in zip(rows, sc["member_acc"], sc["member_loss"]):
        r.update({"val_acc": a, "val_loss": l_})
    best_member = max(sc["member_acc"])
    gain = sc["ensemble_acc"] - best_member
    rows.append({"member": "ensemble (mean logits)", "model": f"{len(members)} models",
                 "recorded_val_acc": None, "val_acc": sc["ensemble_acc"],
                 "val_loss": sc["ensemble_loss"]})
    ctx.run.write_csv("ensemble.csv", rows)
    ctx.run.write_metrics([])
    v = Verdict("squeeze.ensemble", "pass" if gain >= 0 else "warn", value=sc["ensemble_acc"],
                expected=f">= best member {best_member:.4f}",
                message=(f"ensemble of {len(members)}: val acc {sc['ensemble_acc']:.4f} "
                         f"({gain:+.4f} vs the best member)" if gain >= 0 else
                         f"the ensemble ({sc['ensemble_acc']:.4f}) is below its best member "
                         f"({best_member:.4f}): use fewer, better members (stage.params.k)"),
                details={"members": [str(m) for m in members]})
    summary = {"stage": cfg.stage.name, "name": cfg.name, "val_acc": sc["ensemble_acc"],
               "val_loss": sc["ensemble_loss"], "best_member_val_acc": best_member,
               "ensemble_gain": gain, "members": [str(m) for m in members],
               "member_val_acc": sc["member_acc"], "candidates": len(cands),
               "checks": {"pass": int(v.status == "pass"), "warn": int(v.status == "warn"),
                          "fail": 0, "skip": 0},
               "checks_failed": [], "run_dir": str(ctx.run.path),
               "data": {"kind": data.kind, "num_val": len(data.val), "num_classes": data.num_classes,
                        "fingerprint": data.fingerprint}}
    body = (f"<p>{len(members)} of {len(cands)} candidate(s), ranked by recorded val accuracy; "
            "each reloaded from its best checkpoint and evaluated on the full val set "
            f"({len(data.val)} images); the ensemble averages their logits.</p>" +
            table(rows, ["member", "model", "recorded_val_acc", "val_acc", "val_loss"]) +
            f"<p>Ensemble {sc['ensemble_acc']:.4f} vs best member {best_member:.4f} "
            f"({esc(f'{gain:+.4f}')}).</p>")
    return finish(cfg, ctx, None, [v], summary, sections=[("Ensemble", body)],
                  title=f"squeeze: ensemble of {len(members)} on {data.kind}")
