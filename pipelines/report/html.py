"""The report page: hand-written HTML with inline CSS, no scripts from elsewhere, no fonts, no network.

The page opens from disk (``file://``) in any browser: every asset is a relative path under ``assets/``. One inline
script marks the page when every image has loaded (``<body data-images="loaded N/N">``), which is what the
browser test reads; a broken image shows as ``data-images="broken K/N"``. Image sources arrive percent-encoded
(`pipelines.report.assets.url`) and are HTML-escaped here.
"""

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2329;
       background: #f4f6f8; }
header { background: #1d2a38; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #b9c6d3; }
nav { padding: 8px 28px; background: #e6ebf0; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #1d4f7a; text-decoration: none; }
main { padding: 8px 28px 40px; }
section { background: #fff; border-radius: 6px; padding: 12px 18px 18px; margin: 16px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 18px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 14px 40px; align-items: flex-start; }
figure { margin: 0; flex: 1 1 460px; max-width: 620px; }
figure img { width: 100%; height: auto; border: 1px solid #dde3e8; }
figcaption { font-size: 12px; color: #56616b; max-width: 620px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { border-bottom: 1px solid #e3e7eb; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #56616b; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 8px 0; }
.bad { color: #b03a2e; font-weight: 600; }
.good { color: #2e7d32; font-weight: 600; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { width: 270px; background: #fafbfc; border: 1px solid #e3e7eb; border-radius: 4px; padding: 6px; }
.tile img { display: block; width: 256px; height: 256px; }
.tile .id { font-family: ui-monospace, monospace; font-size: 11px; word-break: break-all; }
.tile table { font-size: 11px; }
.reasons { color: #b03a2e; font-size: 12px; }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 5px; }
"""

_LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute("data-images",
    (broken ? "broken " + broken : "loaded " + images.length) + "/" + images.length);
});
"""


def text(value: Any) -> str:
    """``value`` escaped for HTML; floats with 4 significant digits, ``None`` as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table; numbers are right-aligned."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{text(v)}</td>'
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{text(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(src: str, title: str, caption: str = "") -> str:
    """An image with its caption; ``src`` is relative to ``index.html``."""
    cap = f"<figcaption><b>{text(title)}</b>{'. ' + text(caption) if caption else ''}</figcaption>"
    return f'<figure><img src="{escape(src)}" alt="{escape(title)}" loading="eager">{cap}</figure>'


def note(message: str) -> str:
    """A highlighted remark (absent data, sampling, warnings)."""
    return f'<p class="note">{text(message)}</p>'


def grid(items: Iterable[str]) -> str:
    """Items side by side, wrapping."""
    return f'<div class="grid">{"".join(items)}</div>'


def section(anchor: str, title: str, body: str) -> str:
    """A titled block with an id for the navigation bar."""
    return f'<section id="{escape(anchor)}"><h2>{text(title)}</h2>{body}</section>'


def tile(src: str, sample_id: str, headline: str, reasons: Sequence[str], values: Sequence[tuple[str, Any]]) -> str:
    """A gallery entry: the drawn crop, its id, a headline (tier, confidence), reasons and a signal table."""
    rows = "".join(f"<tr><th>{text(k)}</th><td class='num'>{text(v)}</td></tr>" for k, v in values)
    why = f'<div class="reasons">{text(", ".join(map(str, reasons)))}</div>' if reasons else ""
    return (
        f'<div class="tile"><img src="{escape(src)}" alt="{escape(sample_id)}" width="256" height="256">'
        f'<div class="id">{text(sample_id)}</div><div>{text(headline)}</div>{why}<table>{rows}</table></div>'
    )


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are ``(anchor, title, html)``."""
    links = "".join(f'<a href="#{escape(a)}">{text(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, h) for a, t, h in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><header><h1>{text(title)}</h1><p>{text(subtitle)}</p></header>"
        f"<nav>{links}</nav><main>{body}</main><script>{_LOADED_SCRIPT}</script></body></html>\n"
    )
