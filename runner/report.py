"""HTML report rendering: a self-contained page (images beside it in plots/).

Every report (a run's, a sweep's, a study's, a recipe's) is a `Report`: a header (title,
facts such as stage/data/model, key figures, verdict counts, links to related reports),
sections, and a footer listing the run's files. Pure functions from data to HTML strings;
RunDir.write_report puts the page on disk. No external assets: it reads offline.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;
max-width:1180px;color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .3rem} table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top;
font-size:.92rem} th{background:#f6f8fa}
.status{font-weight:600;text-transform:uppercase;color:#fff;border-radius:4px;padding:0 .4rem;
font-size:.8rem}
.figs a{display:inline-block}
.figs img{max-width:100%;height:auto;margin:.3rem;border:1px solid #d0d7de}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.85rem} .sub{color:#57606a}
.kpis{display:flex;flex-wrap:wrap;gap:.4rem 1.8rem;margin:.8rem 0}
.kpi{color:#57606a;font-size:.85rem} .kpi b{font-size:1.3rem;display:block;color:#1f2328}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.6rem 0;
font-size:.92rem} .facts dt{color:#57606a} .facts dd{margin:0}
.verdict{border-radius:6px;padding:.45rem .8rem;margin:.6rem 0;font-weight:600;color:#fff}
.nav{font-size:.9rem;margin:.2rem 0} .nav a{margin-right:1rem} .toc{font-size:.9rem}
footer{margin-top:2.5rem;border-top:1px solid #d0d7de;padding-top:.5rem;font-size:.85rem;
color:#57606a} footer a{margin-right:.8rem}
"""


# click a header of a `table(..., sortable=True)` to sort by it (numbers numerically, n/a last);
# inline so the page stays self-contained
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.style.cursor='pointer';th.title='sort';
  th.addEventListener('click',function(){
   var rows=Array.from(t.querySelectorAll('tr')).slice(1),asc=th.dataset.asc!=='1';
   t.querySelectorAll('th').forEach(function(h){h.dataset.asc='';});th.dataset.asc=asc?'1':'0';
   function key(r){var c=r.children[i],s=c?c.textContent.trim():'',n=parseFloat(s);
    return isNaN(n)||!/^[-+.0-9]/.test(s)?[1,s.toLowerCase()]:[0,n];}
   rows.sort(function(a,b){var x=key(a),y=key(b);if(x[0]!==y[0])return x[0]-y[0];
    return (x[1]<y[1]?-1:x[1]>y[1]?1:0)*(asc?1:-1);});
   rows.forEach(function(r){r.parentNode.appendChild(r);});});});});
"""


# ----------------------------------------------------------------------------- section data
# Stages describe their report sections with these blocks (data, no HTML); `render` turns a
# section's blocks into HTML and the run's finish saves the figures they hold.
@dataclass
class Text:
    """A paragraph. `code` spans (in backticks) are shown as code; `strong` makes it bold."""

    text: str
    strong: bool = False
    note: bool = False  # a grey aside


@dataclass
class Table:
    """Rows as a table. `links`: column -> key of the row holding that cell's href (a cell
    without an href is plain text)."""

    rows: List[Dict[str, Any]]
    columns: Optional[List[str]] = None
    links: Dict[str, str] = field(default_factory=dict)
    sortable: bool = False


@dataclass
class KeyValues:
    values: Dict[str, Any]


@dataclass
class Code:
    text: str


@dataclass
class Figure:
    """A matplotlib figure, saved as plots/<name>.png by the run's finish."""

    figure: Any
    name: str


@dataclass
class Images:
    """Pictures already beside the report (relative paths: plots/*.png, a sub-run's)."""

    paths: List[str]


@dataclass
class Links:
    """(text, href) pairs, as a list."""

    items: List[Tuple[str, str]]


@dataclass
class Section:
    title: str
    # blocks (Text, Table, ...) or, for report pages built outside a stage, ready HTML
    body: Any
    anchor: Optional[str] = None

    def html(self) -> str:
        return self.body if isinstance(self.body, str) else render(self.body)


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = str(text).split("`")
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def render(blocks: Sequence[Any]) -> str:
    """HTML of a section's blocks (a Figure must have been saved: see `saved_figures`)."""
    out = []
    for b in blocks:
        if isinstance(b, Text):
            body = f"<b>{_inline(b.text)}</b>" if b.strong else _inline(b.text)
            out.append(f"<p class='sub'>{body}</p>" if b.note else f"<p>{body}</p>")
        elif isinstance(b, Table):
            out.append(_linked_table(b))
        elif isinstance(b, KeyValues):
            out.append(kv_table(b.values))
        elif isinstance(b, Code):
            out.append(pre(b.text))
        elif isinstance(b, Images):
            out.append(images(b.paths))
        elif isinstance(b, Links):
            out.append(
                "<ul>"
                + "".join(f'<li><a href="{esc(h)}">{esc(t)}</a></li>' for t, h in b.items)
                + "</ul>"
            )
        elif isinstance(b, Figure):
            raise ValueError(f"figure {b.name!r} was not saved before rendering")
        else:
            raise TypeError(f"not a report block: {type(b).__name__}")
    return "".join(out)


def _linked_table(t: Table) -> str:
    if not t.links:
        return table(t.rows, t.columns, sortable=t.sortable)
    cols = list(t.columns or (t.rows[0].keys() if t.rows else []))
    rows = []
    for r in t.rows:
        row = dict(r)
        for col, href_key in t.links.items():
            href = r.get(href_key)
            text = esc(fmt(r.get(col, "")))
            row[col] = f'<a href="{esc(href)}">{text}</a>' if href else text
        rows.append(row)
    return table(rows, cols, raw=list(t.links), sortable=t.sortable)


def saved_figures(sections: Sequence[Section], save) -> None:
    """Replace each Figure block by the Images of its saved file (`save(fig, name) -> path`)."""
    for sec in sections:
        if isinstance(sec.body, str):
            continue
        sec.body = [
            Images([save(b.figure, b.name)]) if isinstance(b, Figure) else b for b in sec.body
        ]


@dataclass
class Report:
    title: str
    subtitle: str = ""
    kpis: Dict[str, Any] = field(default_factory=dict)
    sections: List[Section] = field(default_factory=list)
    # header: label -> text (stage, data, model, ...), shown under the title
    facts: Dict[str, Any] = field(default_factory=dict)
    # verdict counts {"pass": n, "warn": n, "fail": n, "skip": n}: the coloured banner
    counts: Optional[Dict[str, int]] = None
    # (label, href) of related reports: the sweep/recipe above, the trials below
    links: List[Tuple[str, str]] = field(default_factory=list)
    # files beside the report, linked in the footer (relative paths)
    files: List[str] = field(default_factory=list)

    def add(self, title: str, body: str, anchor: Optional[str] = None) -> None:
        self.sections.append(Section(title, body, anchor))

    def render(self) -> str:
        kpis = "".join(
            f'<span class="kpi"><b>{esc(fmt(v))}</b>{esc(k)}</span>' for k, v in self.kpis.items()
        )
        facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd>" for k, v in self.facts.items())
        nav = " ".join(f'<a href="{esc(h)}">{esc(t)}</a>' for t, h in self.links)
        toc = " · ".join(
            f'<a href="#{s.anchor or slug(s.title)}">{esc(s.title)}</a>' for s in self.sections
        )
        body = "".join(
            f'<h2 id="{s.anchor or slug(s.title)}">{esc(s.title)}</h2>{s.html()}'
            for s in self.sections
        )
        if 'class="sortable"' in body:
            body += f"<script>{SORT_JS}</script>"
        files = " ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in self.files)
        return (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            + (f'<p class="nav">{nav}</p>' if nav else "")
            + f"<h1>{esc(self.title)}</h1>"
            + (f'<p class="sub">{esc(self.subtitle)}</p>' if self.subtitle else "")
            + (verdict_banner(self.counts) if self.counts is not None else "")
            + (f'<dl class="facts">{facts}</dl>' if facts else "")
            + (f'<div class="kpis">{kpis}</div>' if kpis else "")
            + f'<p class="toc">{toc}</p>{body}'
            + f"<footer>{('files: ' + files + '<br>') if files else ''}"
            f"written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} by recipe-runner</footer>"
            + "</body></html>"
        )


def verdict_banner(counts: Dict[str, int]) -> str:
    """One line that says how the checks went, coloured by the worst verdict."""
    n = {k: int(counts.get(k, 0) or 0) for k in ("pass", "warn", "fail", "skip")}
    total = sum(n.values())
    worst = "fail" if n["fail"] else "warn" if n["warn"] else "pass" if n["pass"] else "skip"
    if not total:
        text = "no checks ran"
    else:
        text = {
            "fail": f"{n['fail']} of {total} checks failed",
            "warn": f"no check failed; {n['warn']} of {total} warn",
            "pass": f"all {n['pass']} checks passed"
            if not n["skip"]
            else f"{n['pass']} checks passed, none failed",
            "skip": f"all {total} checks skipped",
        }[worst]
        text += "  ·  " + " / ".join(f"{n[k]} {k}" for k in ("pass", "warn", "fail", "skip"))
    return (
        f'<div class="verdict" id="verdict" data-status="{worst}" '
        f'style="background:{STATUS_COLOURS[worst]}">{esc(text)}</div>'
    )


def esc(x: Any) -> str:
    return html.escape(str(x))


def slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return "n/a" if v is None else str(v)


def table(
    rows: Sequence[Dict[str, Any]],
    columns: Optional[Sequence[str]] = None,
    raw: Sequence[str] = (),
    sortable: bool = False,
) -> str:
    """An HTML table; columns named in `raw` hold trusted HTML; `sortable`: click a header
    to sort."""
    if not rows:
        return "<p class='sub'>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{r.get(c, '') if c in raw else esc(fmt(r.get(c, '')))}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><tr>{head}</tr>{body}</table>"


def kv_table(d: Dict[str, Any]) -> str:
    return table([{"key": k, "value": v} for k, v in d.items()])


def status_badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="status" style="background:{colour}">{esc(status)}</span>'


def images(paths: Sequence[str]) -> str:
    """Figures beside the report (relative paths); each opens full size when clicked."""
    return (
        '<div class="figs">'
        + "".join(
            f'<a href="{esc(p)}"><img src="{esc(p)}" alt="{esc(Path(p).stem.replace("_", " "))}"></a>'
            for p in paths
        )
        + "</div>"
    )


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def checks_section(verdicts: Sequence[Any]) -> str:
    """A table of verdicts, then one block per check with its message and pictures."""
    if not verdicts:
        return "<p class='sub'>No checks ran.</p>"
    rows = []
    detail = []
    for v in verdicts:
        d = v.to_dict() if hasattr(v, "to_dict") else v
        rows.append(
            {
                "check": f'<a href="#check-{slug(d["name"])}">{esc(d["name"])}</a>',
                "status": status_badge(d["status"]),
                "value": d.get("value"),
                "expected": d.get("expected"),
                "message": d.get("message"),
            }
        )
        detail.append(
            f'<h3 id="check-{slug(d["name"])}">{esc(d["name"])} '
            f"{status_badge(d['status'])}</h3>"
            f"<p>{esc(d.get('message', ''))}</p>" + images(d.get("artifacts") or [])
        )
    return table(
        rows, ["check", "status", "value", "expected", "message"], raw=("check", "status")
    ) + "".join(detail)


# ----------------------------------------------------------------------------- a run's header
def verdict_counts(verdicts: Sequence[Any]) -> Dict[str, int]:
    statuses = [(v.to_dict() if hasattr(v, "to_dict") else v)["status"] for v in verdicts]
    return {s: statuses.count(s) for s in ("pass", "warn", "fail", "skip")}


def _pct(x: Any) -> Optional[str]:
    return f"{100 * x:.2f}%" if _finite(x) else None


def run_facts(summary: Dict[str, Any]) -> Dict[str, str]:
    """What ran, on what: the lines under a run report's title (missing facts are left out)."""
    out: Dict[str, str] = {"stage": summary.get("stage")}
    if summary.get("name") not in (None, "default"):
        out["experiment"] = summary["name"]
    d = summary.get("data")
    if isinstance(d, dict):
        size = d.get("image_size")
        shape = f" · {d.get('in_chans')}×{size}×{size} px" if size and d.get("in_chans") else ""
        out["data"] = (
            f"{d.get('kind')} · {d.get('num_train')} train / {d.get('num_val')} val · "
            f"{d.get('num_classes')} classes{shape}"
        )
    if summary.get("model"):
        params = summary.get("params")
        out["model"] = str(summary["model"]) + (
            f" · {params:,} parameters" if isinstance(params, int) else ""
        )
    prov = summary.get("provenance") or {}
    if prov.get("device"):
        out["device"] = (
            f"{prov['device']} ({prov.get('device_name') or '?'}, {prov.get('threads')} threads)"
        )
    status = summary.get("status")
    if status and status != "finished":
        why = summary.get("stop_reason") or summary.get("error") or ""
        out["status"] = f"{status}: {why}".rstrip(": ")
    if summary.get("resumed_from"):
        out["resumed from"] = summary["resumed_from"]
    if summary.get("run_dir"):
        out["run"] = summary["run_dir"]
    return {k: v for k, v in out.items() if v not in (None, "")}


def run_kpis(summary: Dict[str, Any]) -> Dict[str, Any]:
    """The key figures of a run, formatted for people; figures it does not have are left out."""
    best = _pct(summary.get("best_val_acc"))
    if best and summary.get("best_epoch") is not None:
        best += f" (epoch {summary['best_epoch']})"
    ips, wall, params = summary.get("images_per_s"), summary.get("wall_s"), summary.get("params")
    test = summary.get("test") if isinstance(summary.get("test"), dict) else {}
    ci = test.get("acc_ci95") or [None, None]
    test_acc = _pct(test.get("acc"))
    if test_acc and _finite(ci[0]) and _finite(ci[1]):
        test_acc += f" ({_pct(ci[0])} - {_pct(ci[1])}, 95%, n={test.get('n')})"
    k = {
        "val accuracy": _pct(summary.get("val_acc")),
        "best val accuracy": best,
        # the final model's, scored once (nothing selected on it)
        "test accuracy": test_acc,
        "human baseline": _pct(summary.get("human_baseline")),
        "val loss": summary.get("val_loss"),
        "train loss": summary.get("train_loss"),
        "epochs": summary.get("epochs") or None,  # 0 epochs: a stage that trains nothing
        "images": summary.get("images"),
        "images/s": f"{ips:,.0f}" if _finite(ips) else None,
        "wall time": f"{wall:.1f} s" if _finite(wall) else None,
        "parameters": f"{params:,}" if isinstance(params, int) and params else None,
    }
    return {
        key: v
        for key, v in k.items()
        if v is not None and not (isinstance(v, float) and not math.isfinite(v))
    }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def related_links(run_path: Path) -> List[Tuple[str, str]]:
    """Links from a run's report up to the report of what it is part of: the sweep summary
    (multirun jobs, tuning trials) or the run whose folder holds this one (recipe stages);
    and down to the reports of runs in its own subfolders (a recipe's stages)."""
    links: List[Tuple[str, str]] = []
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            links.append(("↑ sweep summary", "../report.html"))
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass

    def is_run(d: Path) -> bool:
        return (d / ".hydra").is_dir() or (d / "summary.json").exists()

    parent = Path(run_path).parent
    if not links and is_run(parent):
        links.append(("↑ parent run", "../report.html"))
    elif not links and is_run(parent.parent):  # a ladder rung or seed rerun: <run>/rungs/<k>
        links.append(("↑ parent run", "../../report.html"))
    run_path = Path(run_path)
    if run_path.is_dir():
        for d in sorted(p for p in run_path.iterdir() if p.is_dir()):
            if (d / "report.html").is_file():
                links.append((f"↓ {d.name}", f"{d.name}/report.html"))
            elif not is_run(d):  # a folder of runs (rungs/, seeds/): one level further
                links += [
                    (f"↓ {d.name}/{c.name}", f"{d.name}/{c.name}/report.html")
                    for c in sorted(d.iterdir())
                    if (c / "report.html").is_file()
                ]
    return links


# files beside a run's report worth a click; anything else at the top level is listed too
RUN_FILES = (
    "metrics.csv",
    "summary.json",
    "checks.json",
    "runner.log",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
)


def run_files(run_path: Path) -> List[str]:
    run_path = Path(run_path)
    named = [f for f in RUN_FILES if (run_path / f).is_file()]
    others = sorted(
        p.name
        for p in run_path.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != "report.html"
        and p.name not in named
    )
    return named + others
