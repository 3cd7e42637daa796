"""The review page's document: ``review.html``, one self-contained page (inline style and script,
`pipelines.report.review_script`) over images under ``assets/review/``, opening from disk with no server.

Its data, the contract between this module, the page's script and the tests, is one JSON object in
``<script type="application/json" id="review-data">`` (``version`` :data:`PAGE_DATA_VERSION`)::

    {"version": 1,
     "storage_key": "dpmesh-review/v1/<16 hex>",        # localStorage key: one per label run (reviews.LabelRun.key)
     "review_header": {"format", "version", "label_run", "sample"},   # the start of every review.json it saves
     "reasons": [[name, what it means], ...],           # reject reasons, numbered 1.. on the page
     "persons": [{"sample_id", "shard", "model_id", "stratum", "overlay", "photo",   # image URLs, relative
                  "tier", "confidence", "reasons", "signals": [[name, value], ...],
                  "crop_found": bool, "mesh_in_crop": float | null}, ...]}          # in the page's order

The object is written with ``<``, ``>`` and ``&`` escaped as ``\\u003c`` ..., so no value (a label location, a sample
id) can close the script element.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.common.reviews import REJECT_REASONS, LabelRun
from pipelines.report import html
from pipelines.report.review_script import CSS, SCRIPT


PAGE_NAME = "review.html"
PAGE_DATA_ID = "review-data"
PAGE_DATA_VERSION = 1


def script_json(value: Any) -> str:
    """``value`` as JSON that can sit inside a ``<script>`` element (no ``<``, ``>`` or ``&`` left as such)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_data(storage_key: str, review_header: dict[str, Any], persons: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's data object (module docstring)."""
    return {
        "version": PAGE_DATA_VERSION,
        "storage_key": storage_key,
        "review_header": review_header,
        "reasons": [[name, meaning] for name, meaning in REJECT_REASONS.items()],
        "persons": persons,
    }


_KEYS = (
    (("a",), "accept: the mesh fits the person"),
    (("r",), "reject, then 1-6 for a reason, Enter or r for none, Esc to cancel"),
    (("s", "→"), "skip: next person, no decision"),
    (("b", "←"), "back"),
    (("u",), "undo this person's decision"),
    (("o",), "overlay / photo"),
    (("i",), "details: tier, confidence, signals (hidden: judge the picture first)"),
    (("d",), "download review.json"),
    (("n",), "your name (Enter to leave the field)"),
)
"""The keys the page's script handles (`pipelines.report.review_script`), as the page lists them."""


def render(run: LabelRun, labels: str, data: dict[str, Any], about: str, notes: list[str]) -> str:
    """The whole ``review.html``: ``labels`` is the label output as the user named it (``run`` holds it resolved),
    ``about`` one line on how the persons were drawn, ``notes`` warnings."""
    keys = "".join(
        f'<tr><td class="keys">{" ".join(f"<kbd>{html.text(k)}</kbd>" for k in names)}</td>'
        f"<td>{html.text(what)}</td></tr>"
        for names, what in _KEYS
    )
    total = len(data["persons"])
    empty = "" if total else html.note("No persons to review: the label output has no rows.")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Review · {html.text(labels)}</title><style>{CSS}</style></head>\n"
        f"<body><header><h1>Review the labels of {html.text(labels)}</h1>"
        f"<p>config hash {html.text(run.config_hash)} · pipeline {html.text(run.pipeline_version)} · "
        f"{html.text(about)}</p></header>"
        f'<div id="bar"><progress id="progress" value="0" max="{total}"></progress><span id="count"></span>'
        '<label>reviewer <input id="reviewer" placeholder="your name" autocomplete="name"></label>'
        '<button id="download" type="button">Download review.json</button><span id="saved"></span>'
        '<a href="index.html">back to the report</a></div>'
        f"<main>{empty}{''.join(html.note(n) for n in notes)}"
        '<noscript><p class="note">The review page needs JavaScript (inline; nothing is fetched).</p></noscript>'
        '<div id="stage"><figure><img id="view" alt="" width="512" height="512">'
        '<figcaption id="caption"></figcaption></figure>'
        '<aside><div id="verdict"></div>'
        '<div id="reasons" hidden><b>Why reject?</b> Press a number, Enter for no reason, Esc to cancel.'
        '<ol id="reason-list"></ol></div>'
        f'<table id="keys"><tbody>{keys}</tbody></table>'
        '<div id="details" hidden><table id="facts"></table></div></aside></div>'
        '<div id="strip" aria-label="persons: green accepted, red rejected"></div>'
        "<p>Decisions are kept in this browser for these labels (a reload keeps them). Download review.json and "
        "pass it to <code>dpmesh-refilter review=review.json</code>: rejects are rejected (reason "
        "<code>reviewed_reject</code>), accepts kept whatever their score.</p></main>"
        f'<script type="application/json" id="{PAGE_DATA_ID}">{script_json(data)}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def read_page_data(page: str) -> dict[str, Any]:
    """The data object of a ``review.html`` (for tests and tools).

    Raises:
        ValueError: the page holds no data element.
    """
    start_tag = f'<script type="application/json" id="{PAGE_DATA_ID}">'
    start = page.find(start_tag)
    if start < 0:
        raise ValueError("not a review page: no review-data element")
    start += len(start_tag)
    data: dict[str, Any] = json.loads(page[start : page.index("</script>", start)])
    return data
