"""The one end of every run: write the run directory from a stage's StageResult, render its
report and decide the exit code.

A stage hands back data (runner/stages/protocol.py StageResult); this module is the only
one that turns it into files: checks.json, summary.json, the stage's own files (ladder.csv,
lineage.json, ...), plots/*.png and report.html, all through the output module (RunDir).
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from typing import Any, List

from omegaconf import OmegaConf

from runner.stages.protocol import Context, Rows, StageResult

log = logging.getLogger("runner")


def finish(cfg, ctx: Context, result: StageResult) -> int:
    """Write everything `result` holds into ctx.run, log the outcome; the exit code:
    0, or 1 when a check failed (checks.strict) or the run stopped on a NaN/Inf loss."""
    from runner import plots
    from runner.report import (
        Report,
        checks_section,
        esc,
        images,
        kv_table,
        pre,
        related_links,
        run_facts,
        run_files,
        run_kpis,
        saved_figures,
        table,
        verdict_counts,
    )

    run, verdicts, summary = ctx.run, result.verdicts, result.summary
    save_verdict_figures(ctx, verdicts)
    saved_figures(result.sections, lambda fig, name: run.save_figure(fig, name))
    for name, content in result.files.items():
        write_file(run, name, content)
    if result.metrics is not None:
        run.write_metrics(result.metrics)
    stage = summary.get("stage") or cfg.stage.name  # a sub-run may label itself
    if ctx.lineage:
        summary.setdefault(
            "from", {k: ctx.lineage[k] for k in ("source", "source_stage", "weights")}
        )
    failed = [v.name for v in verdicts if v.status == "fail"]
    # the run's exit code, in its summary: runner/jobs.py RunRecord reads it back
    from runner.jobs import exit_code

    code = (
        result.exit_code
        if result.exit_code is not None
        else exit_code(failed, bool(cfg.checks.strict), str(summary.get("status") or ""))
    )
    summary["exit_code"] = code
    run.write_checks(verdicts)
    run.write_summary(summary)

    # header: what ran on what, key figures, verdict counts, links up to a sweep/recipe report
    rep = Report(
        result.title or f"{stage}: {summary.get('model', '')} on {cfg.data.kind}",
        kpis=run_kpis(summary),
        facts=run_facts(summary),
        counts=verdict_counts(verdicts),
        links=related_links(run.path),
        files=run_files(run.path),
    )
    if summary.get("error"):
        rep.add("Stopped", f"<p><b>{esc(summary['error'])}</b></p>")
    if summary.get("unreadable_files"):
        bad = summary["unreadable_files"]
        rep.add(
            "Unreadable files",
            f"<p>{len(bad)} file(s) could not be read and were left out "
            "of training (data.on_unreadable=skip); stage=inspect lists every one.</p>"
            + table([{"file": k, "error": v} for k, v in bad.items()]),
        )
    rep.add("Checks", checks_section(verdicts))
    if result.history:
        mark = None if result.mark_epoch is None else result.mark_epoch + 0.5
        rel = run.save_figure(
            plots.curves(
                result.history,
                f"{stage}: training curves",
                mark_epoch=mark,
                mark_label="continued here",
            ),
            "curves",
        )
        rep.add("Curves", images([rel]) + table(result.history))
    for sec in result.sections:
        rep.sections.append(sec)
    if ctx.lineage:
        from runner.lineage import lineage_html

        rep.add("Started from", lineage_html(ctx.lineage))
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    rep.add("Summary", kv_table(flat))
    if isinstance(summary.get("data"), dict):
        rep.add("Data", kv_table(summary["data"]))
    rep.add(
        "Config",
        pre(OmegaConf.to_yaml(result.config if result.config is not None else cfg))
        + "<p>Overrides:</p>"
        + pre("\n".join(ctx.overrides) or "(none)"),
    )
    if "provenance" in summary:
        rep.add("Provenance", pre(json.dumps(summary["provenance"], indent=2)))
    run.write_report(rep.render())

    lines = console_checks(verdicts)
    if lines:
        log.info("checks:\n%s", lines)
    n = summary.get("epochs")
    ran = ", ".join(
        x
        for x in (
            f"{n} epoch{'' if n == 1 else 's'}" if isinstance(n, int) else "",
            f"{summary['wall_s']:.1f} s" if isinstance(summary.get("wall_s"), (int, float)) else "",
        )
        if x
    )
    loss = summary.get("val_loss")
    test = summary.get("test") if isinstance(summary.get("test"), dict) else None
    ci = (test or {}).get("acc_ci95") or [None, None]
    log.info(
        "%s: val_acc %s%s%s%s  ->  %s",
        stage,
        _f(summary.get("val_acc")),
        f"  val_loss {_f(loss)}" if loss is not None else "",
        f"  test_acc {_f(test.get('acc'))} [{_f(ci[0])}, {_f(ci[1])}] (n={test.get('n')})"
        if test and test.get("acc") is not None and ci[0] is not None
        else "",
        f"  ({ran})" if ran else "",
        run.path,
    )
    if failed and result.exit_code is None:
        log.warning(
            "failed checks: %s%s",
            ", ".join(failed),
            "" if cfg.checks.strict else " (checks.strict=false: exit code 0)",
        )
    return code


def write_file(run, name: str, content: Any) -> None:
    """One of a stage's own files: rows as CSV, text as it is, an object as JSON, a
    model file (.pt) through torch.save."""
    if isinstance(content, Rows):
        run.write_csv(name, content.rows, content.columns)
    elif isinstance(content, str):
        run.write_text(name, content)
    elif name.endswith(".csv"):
        run.write_csv(name, list(content))
    elif name.endswith(".json"):
        run.write_json(name, content)
    elif name.endswith(".pt"):  # a model file (squeeze's ensemble.pt): tensors, torch.save
        run.save_model(content, name)
    else:
        run.write_text(name, str(content))


def save_verdict_figures(ctx: Context, verdicts: List[Any]) -> None:
    """Checks return figures; the output module writes them and the verdict lists the paths."""
    for v in verdicts:
        for key, fig in list(v.figures.items()):
            v.artifacts.append(ctx.run.save_figure(fig, f"{v.name.replace('.', '_')}_{key}"))
        v.figures.clear()


def console_checks(verdicts: List[Any]) -> str:
    """The checks as a console table, each message wrapped in full under its column."""
    if not verdicts:
        return ""
    w = max(len(v.name) for v in verdicts)
    lines = [f"{'check'.ljust(w)}  status  value / message"]
    indent = " " * (w + 10)
    for v in verdicts:
        val = v.value if not isinstance(v.value, float) else f"{v.value:.4g}"
        head = f"{v.name.ljust(w)}  {v.status.upper():6}  "
        text = f"{val}  {v.message}" if val is not None else v.message
        lines.append(
            textwrap.fill(
                text,
                width=max(60, 120 - len(head)) + len(head),
                initial_indent=head,
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return "\n".join(lines)


def _f(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else str(x)
