"""HTML report rendering: a self-contained page (images beside it in plots/).

Pure functions from data to HTML strings; RunDir.write_report puts the page on disk.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;
vertical-align:top;font-size:.92rem} th{background:#f6f8fa}
.status{font-weight:600;text-transform:uppercase;color:#fff;border-radius:4px;padding:0 .4rem;font-size:.8rem}
.figs img{max-width:520px;margin:.3rem;border:1px solid #d0d7de} pre{background:#f6f8fa;padding:.8rem;overflow:auto;
font-size:.85rem} .sub{color:#57606a} .kpi{display:inline-block;margin-right:1.6rem} .kpi b{font-size:1.3rem;display:block}
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


@dataclass
class Section:
    title: str
    body: str
    anchor: Optional[str] = None


@dataclass
class Report:
    title: str
    subtitle: str = ""
    kpis: Dict[str, Any] = field(default_factory=dict)
    sections: List[Section] = field(default_factory=list)

    def add(self, title: str, body: str, anchor: Optional[str] = None) -> None:
        self.sections.append(Section(title, body, anchor))

    def render(self) -> str:
        kpis = "".join(f'<span class="kpi"><b>{esc(fmt(v))}</b>{esc(k)}</span>' for k, v in self.kpis.items())
        toc = " · ".join(f'<a href="#{s.anchor or slug(s.title)}">{esc(s.title)}</a>' for s in self.sections)
        body = "".join(f'<h2 id="{s.anchor or slug(s.title)}">{esc(s.title)}</h2>{s.body}' for s in self.sections)
        if 'class="sortable"' in body:
            body += f"<script>{SORT_JS}</script>"
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<title>{esc(self.title)}</title><style>{CSS}</style></head><body>'
                f'<h1>{esc(self.title)}</h1><p class="sub">{esc(self.subtitle)}</p>'
                f'<p>{kpis}</p><p class="sub">{toc}</p>{body}</body></html>')


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


def table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None, raw: Sequence[str] = (),
          sortable: bool = False) -> str:
    """An HTML table; columns named in `raw` hold trusted HTML; `sortable`: click a header to sort."""
    if not rows:
        return "<p class='sub'>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{r.get(c, '') if c in raw else esc(fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><tr>{head}</tr>{body}</table>"


def kv_table(d: Dict[str, Any]) -> str:
    return table([{"key": k, "value": v} for k, v in d.items()])


def status_badge(status: str) -> str:
    return f'<span class="status" style="background:{STATUS_COLOURS.get(status, "#6e7781")}">{esc(status)}</span>'


def images(paths: Sequence[str]) -> str:
    return '<div class="figs">' + "".join(f'<img src="{esc(p)}" alt="{esc(p)}">' for p in paths) + "</div>"


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
        rows.append({"check": f'<a href="#check-{slug(d["name"])}">{esc(d["name"])}</a>',
                     "status": status_badge(d["status"]), "value": d.get("value"),
                     "expected": d.get("expected"), "message": d.get("message")})
        detail.append(f'<h3 id="check-{slug(d["name"])}">{esc(d["name"])} {status_badge(d["status"])}</h3>'
                      f'<p>{esc(d.get("message", ""))}</p>' + images(d.get("artifacts") or []))
    return table(rows, ["check", "status", "value", "expected", "message"], raw=("check", "status")) + "".join(detail)
