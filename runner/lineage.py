"""`from=<run dir>`: start a stage from an earlier run's outcome.

A stage YAML states only what it changes relative to the stage it builds on
(conf/stage/overfit.yaml: `defaults: [baseline]` plus a ResNet). `from=` applies that idea
to results: the new run's config is

    the source run's outcome config          (what that run ended with)
    + what this stage's YAML chain changes   (relative to the stages both share)
    + what this command changed              (its overrides and experiment files)

later lines winning. The source's *outcome* is its composed config for a plain run, the
kept ladder for stage=regularize (regularized_config.yaml), the best trial for a tune sweep
(study.json), and the last training stage for a recipe run. Training stages start from
scratch (overfit, regularize and tune compare fresh runs); stage=train also loads the
source's best weights (a warm start) when the model is the same, and `init_from=<run dir or
.pt>` does that explicitly in any training stage.

Everything decided lands in the run directory: lineage.json (source, the outcome file read,
every key taken from the source or set by the stage, the weights loaded) and config.yaml
(the config the run used; .hydra/config.yaml holds the composition before `from=`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf, open_dict

from runner import jobs
from runner.errors import ConfigError
from runner.jobs import COMMAND, COMMAND_WITH_PER_RUN, INHERITED, key_class, keys_of
from runner.output import read_summary
from runner.stages.protocol import Outcome

log = logging.getLogger("runner")


def _per_run(key: str) -> bool:
    """A key that belongs to one run and is never taken from the source (runner/jobs.py
    INHERITED: only identity keys are)."""
    return key_class(key) not in INHERITED


@dataclass
class Lineage:
    source: str
    source_stage: str
    config_file: str
    note: str
    common_stage: Optional[str]
    from_source: Dict[str, Any] = field(default_factory=dict)
    from_stage: Dict[str, Any] = field(default_factory=dict)
    from_command: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    weights_skipped: Optional[str] = None  # why the source's weights were not loaded

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- outcomes
def load_yaml(p: Path) -> Dict[str, Any]:
    try:
        c = OmegaConf.load(p)
    except Exception as e:  # noqa: BLE001 -- any parse error: one message naming the file
        raise ConfigError(f"from=: cannot read {p}: {e}") from e
    if not isinstance(c, DictConfig):
        raise ConfigError(f"from=: {p} holds a list, not a config (a mapping of keys)")
    return OmegaConf.to_container(c, resolve=False)  # type: ignore[return-value]


def run_config(d: Path) -> Optional[Path]:
    """A plain run's final config: config.yaml (written when it had `from=`) or Hydra's."""
    for p in (d / "config.yaml", d / ".hydra" / "config.yaml"):
        if p.is_file():
            return p
    return None


def stage_of(src: Path) -> Optional[str]:
    """Which stage made a run directory: its summary.json, else its config (a run's, or
    a sweep's multirun.yaml), else the config saved in its checkpoint."""
    summary = jobs.summary(src)  # a malformed summary.json: ConfigError naming it
    if summary.get("stage"):
        return str(summary["stage"])
    for p in (src / "config.yaml", src / ".hydra" / "config.yaml", src / "multirun.yaml"):
        if p.is_file():
            name = (load_yaml(p).get("stage") or {}).get("name")
            if name:
                return str(name)
    from runner.checkpoint import best_checkpoint, load_checkpoint

    ck = best_checkpoint(src)
    if ck is not None:
        try:
            conf = OmegaConf.to_container(OmegaConf.create(load_checkpoint(ck)["config"]))
            return str((conf.get("stage") or {}).get("name") or "") or None
        except Exception:  # noqa: BLE001 -- not our checkpoint: no stage to tell
            return None
    return None


def outcome(src: Path) -> Outcome:
    """What `from=<src>` starts from: the outcome its stage defines (runner/stages/<stage>.py
    `outcome`): a plain run's config and best weights, a ladder's kept changes, a study's best
    trial, squeeze's adopted model, a recipe's final model."""
    from runner.stages import STAGES, get_stage

    if not src.is_dir():
        raise ConfigError(
            f"from={src}: not a directory; expected a run directory "
            "(outputs/<date>/<time>), a tune sweep or a recipe run"
        )
    stage = stage_of(src)
    if stage in STAGES:
        return get_stage(stage).outcome(src)
    return run_outcome(src)


def run_outcome(src: Path) -> Outcome:
    """A plain run's outcome: the config it ran with and its best weights. A run without
    summary.json has not finished and is refused (ConfigError)."""
    from runner.checkpoint import best_checkpoint, load_checkpoint

    _refuse_unfinished(src)
    cfg_file = run_config(src)
    ck = best_checkpoint(src)
    if cfg_file is not None:
        conf = load_yaml(cfg_file)
        return Outcome(
            src,
            conf,
            cfg_file,
            str((conf.get("stage") or {}).get("name", "?")),
            ck,
            "the run's composed config",
            run=src,
        )
    if ck is not None:
        conf = OmegaConf.to_container(OmegaConf.create(load_checkpoint(ck)["config"]))
        return Outcome(
            src,
            conf,
            ck,
            str((conf.get("stage") or {}).get("name", "?")),
            ck,
            "the config saved in the checkpoint",
            run=src,
        )
    raise ConfigError(
        f"from={src}: no run there: expected config.yaml, .hydra/config.yaml, "
        "regularized_config.yaml, study.json or checkpoints/*.pt"
    )


def _refuse_unfinished(src: Path) -> None:
    """A run directory without summary.json has not finished (it crashed, was refused or was
    interrupted): its config and checkpoints are no outcome to start from."""
    if read_summary(src) is not None:
        return
    from runner.checkpoint import best_checkpoint

    if run_config(src) is None and best_checkpoint(src) is None:
        return  # no run there at all: outcome's own message says what it expected
    last = src / "checkpoints" / "last.pt"
    hint = (
        f"continue it with `python -m runner resume={src}`, then start from it"
        if last.is_file()
        else "it has no checkpoint to resume from: run it again, then start from that run"
    )
    raise ConfigError(
        f"from={src}: this run has not finished (no summary.json: it was "
        f"interrupted, crashed or refused before the end); {hint}"
    )


# ----------------------------------------------------------------------------- stage chains
def stage_chain(name: str) -> List[str]:
    """The stages a stage YAML builds on, root first: overfit -> [train, baseline, overfit].

    Read from the stage files' own defaults lists, through the config sources on Hydra's
    search path (ConfigLoader.get_sources, the interface sweepers and plugins use): a stage's
    parent is its first defaults entry relative to the stage group (`- baseline`)."""
    from hydra.core.global_hydra import GlobalHydra

    sources = GlobalHydra.instance().config_loader().get_sources()
    chain: List[str] = []
    cur: Optional[str] = name
    while cur and cur not in chain:
        chain.insert(0, cur)
        cur = _parent_stage(sources, cur)
    return chain


def _parent_stage(sources, stage: str) -> Optional[str]:
    path = f"stage/{stage}"
    for src in sources:  # the first source that has the file, as Hydra's search path goes
        if not src.is_config(path):
            continue
        defaults = src.load_config(path).config.get("defaults") or []
        for d in defaults:
            if isinstance(d, str) and d != "_self_" and not d.startswith("/"):
                return d.split("@", 1)[0].rsplit("/", 1)[-1].removesuffix(".yaml") or None
        return None
    return None


def common_stage(a: Sequence[str], b: Sequence[str]) -> Optional[str]:
    out = None
    for x, y in zip(a, b):
        if x != y:
            break
        out = x
    return out


# ----------------------------------------------------------------------------- merging
def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted leaves of a nested dict; lists and empty dicts are leaves."""
    if not isinstance(d, dict) or (not d and prefix):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key))
    return out


def _top(key: str) -> str:
    return key.split(".", 1)[0]


def _plain(cfg) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _diff(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Leaves of b that differ from (or are missing in) a."""
    return {k: v for k, v in b.items() if k not in a or a[k] != v}


def command_keys(overrides: Sequence[str], include_per_run: bool = False) -> List[str]:
    """The dotted keys (or whole group packages) this command set explicitly: its identity
    keys, and with `include_per_run` its stage, from=, init_from, resume and trial keys too
    (runner/jobs.py COMMAND, COMMAND_WITH_PER_RUN)."""
    return keys_of(overrides, COMMAND_WITH_PER_RUN if include_per_run else COMMAND)


def _stage_leaves(config_name: str, stage: str) -> Dict[str, Any]:
    """The dotted leaves of `stage=<stage>` composed alone. A ladder applies from= once per
    rung (checked up front, then run): the same two stages each time, composed once."""
    from hydra.core.global_hydra import GlobalHydra

    sources = tuple(
        str(getattr(x, "path", x)) for x in GlobalHydra.instance().config_loader().get_sources()
    )
    key = (sources, config_name, stage)
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = flatten(_plain(jobs.compose_stage(config_name, stage)))
    return dict(_STAGE_CACHE[key])


_STAGE_CACHE: Dict[Tuple[Any, str, str], Dict[str, Any]] = {}


def inherit(
    cfg: DictConfig, overrides: Sequence[str], original_cwd: str, config_name: str = "config"
) -> Tuple[DictConfig, Lineage]:
    """The config of a run with `from=`: source outcome + stage changes + command changes."""
    src = Path(original_cwd) / str(cfg["from"])
    out = outcome(src.expanduser())
    new_stage = str(cfg.stage.name)
    try:
        chain_new, chain_src = stage_chain(new_stage), stage_chain(out.stage)
    except Exception:  # noqa: BLE001 -- an unknown stage of the source: compare with itself
        chain_new, chain_src = stage_chain(new_stage), []
    anc = common_stage(chain_new, chain_src)
    stage_new = _stage_leaves(config_name, new_stage)
    stage_anc = _stage_leaves(config_name, anc) if anc else {}
    by_stage = {k: v for k, v in _diff(stage_anc, stage_new).items() if not _per_run(k)}
    user = flatten(_plain(cfg))
    by_command = {k: v for k, v in _diff(stage_new, user).items() if not _per_run(k)}
    for k in command_keys(overrides):  # set explicitly, even to the stage's own value
        by_command.update({u: v for u, v in user.items() if u == k or u.startswith(k + ".")})
    source = {k: v for k, v in flatten(out.config).items() if not _per_run(k)}

    def covered(k: str, keys) -> bool:
        parts = k.split(".")
        return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))

    taken = {
        k: v
        for k, v in source.items()
        if not covered(k, by_stage) and not covered(k, by_command) and user.get(k, object()) != v
    }
    from runner.targets import refuse_untrusted, untrusted_code

    # the source's config is data: code it alone names is not run (runner/targets.py)
    refuse_untrusted(
        untrusted_code(taken, user),
        f"from={src}: {out.config_file}",
        bool(cfg.get("trust_run_configs")),
    )
    result = cfg.copy()
    with open_dict(result):
        for k, v in taken.items():
            try:
                OmegaConf.update(result, k, v, merge=False, force_add=True)
            except Exception as e:  # noqa: BLE001 -- a schema clash: name the key and the file
                raise ConfigError(
                    f"from={src}: {k}={v!r} from {out.config_file} does not fit "
                    f"this run's config: {e}"
                ) from e
    lin = Lineage(
        source=str(src),
        source_stage=out.stage,
        config_file=str(out.config_file),
        note=out.note,
        common_stage=anc,
        from_source=taken,
        from_stage={
            k: v
            for k, v in by_stage.items()
            if source.get(k, object()) != v and not covered(k, by_command)
        },
        from_command={k: v for k, v in by_command.items() if source.get(k, object()) != v},
    )
    # the stage's own settings the command gave (never taken from the source; listed so the
    # record shows every change the command made)
    for k in command_keys(overrides, include_per_run=True):
        if k.startswith("stage.params"):
            lin.from_command.update(
                {u: v for u, v in user.items() if u == k or u.startswith(k + ".")}
            )
    explicit = "init_from" in command_keys(overrides, include_per_run=True)  # init_from=null: none
    from runner.stages import stage_flag

    if (
        stage_flag(new_stage, "WARM_START")
        and not explicit
        and not cfg.get("init_from")
        and out.weights is not None
    ):
        theirs, ours = (
            architecture(out.config.get("model") or {}),
            architecture(_plain(result.model)),
        )
        if theirs == ours:
            with open_dict(result):
                result.init_from = str(out.weights)
            lin.weights = str(out.weights)
        else:  # another model: its weights cannot fit; train from scratch and say so
            lin.weights_skipped = (
                f"no warm start: the source's weights are a {_arch_name(theirs)}, "
                f"this run builds a {_arch_name(ours)} (init_from=<run dir> "
                "loads weights explicitly)"
            )
            log.warning("from=: %s", lin.weights_skipped)
    log.info(
        "from %s (%s, %s): %d key(s) from the source, %d set by stage %s, %d by the command%s",
        src,
        out.stage,
        out.note,
        len(taken),
        len(lin.from_stage),
        new_stage,
        len(lin.from_command),
        f"; weights from {out.weights}" if lin.weights else "",
    )
    return result, lin


def architecture(model: Dict[str, Any]) -> Tuple[Any, ...]:
    """What decides a model's weight shapes (given the data): builder, name, its kwargs.
    Dropout, drop-path and pretrained weights change no shape."""
    return (
        model.get("_target_"),
        None if model.get("_target_") else model.get("name"),
        json.dumps(model.get("kwargs") or {}, sort_keys=True, default=str),
    )


def _arch_name(a: Tuple[Any, ...]) -> str:
    return str(a[0] or a[1]) + ("" if a[2] == "{}" else f" with kwargs {a[2]}")


def apply(
    cfg: DictConfig, overrides: Sequence[str], original_cwd: str
) -> Tuple[DictConfig, Optional[Lineage]]:
    """`inherit` when the config has `from`, else the config unchanged."""
    from runner.stages import stage_flag

    if not cfg.get("from") or stage_flag(str(cfg.stage.name), "OWN_FROM"):
        return cfg, None
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "config"
    return inherit(cfg, overrides, original_cwd, name or "config")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def lineage_html(lin: Dict[str, Any]) -> str:
    """The report section: where the run started and which keys came from where.

    Besides `from=`'s keys (Lineage), a stage that reruns a run itself (squeeze's seed reruns)
    may pass `changed` (key: value set on the source's config) and `changed_by` (who set it).
    """
    from runner.report import esc, table

    rows = (
        [
            {"key": k, "value": v, "from": "source run"}
            for k, v in (lin.get("from_source") or {}).items()
        ]
        + [
            {"key": k, "value": v, "from": "this stage's YAML"}
            for k, v in (lin.get("from_stage") or {}).items()
        ]
        + [
            {"key": k, "value": v, "from": "this command"}
            for k, v in (lin.get("from_command") or {}).items()
        ]
        + [
            {"key": k, "value": v, "from": lin.get("changed_by") or "this stage"}
            for k, v in (lin.get("changed") or {}).items()
        ]
    )
    head = (
        f"<p>Started from <code>{esc(lin['source'])}</code>: {esc(lin['note'])} "
        f"(<code>{esc(lin['config_file'])}</code>, {_article(str(lin['source_stage']))} "
        f"{esc(str(lin['source_stage']))} run)."
    )
    if lin.get("weights"):
        head += f" Weights loaded from <code>{esc(lin['weights'])}</code>."
    if lin.get("weights_skipped"):
        head += f" <b>{esc(lin['weights_skipped'])}</b>."
    if lin.get("changed") is not None:
        head += " Keys changed from the source run's config:</p>"
    else:
        common = lin.get("common_stage")
        head += (
            "</p><p>This run's config is the source's config, then what this stage's YAML "
            + (
                f"changes relative to stage {esc(str(common))} (the last stage both build on)"
                if common
                else "sets (the source shares no stage with it)"
            )
            + ", then this command's overrides, later ones winning. A row per key whose value "
            "here differs from what this stage and command alone give (from: source run) or "
            "from the source's (from: this stage's YAML, this command):</p>"
        )
    return head + table(rows, ["key", "value", "from"])
