"""The end of ``dpmesh-report``: the page, its assets, its other pages (``review.html``) and the statistics it was
drawn from, with ``index.html`` last.

``index.html`` is written after every asset, page and ``label_stats.json`` (the merged statistics the plots show,
`pipelines.common.label_stats.MergedStats.to_json`), so a report folder with an index is complete.
"""

import json

from pipelines.common.merged_stats import MergedStats
from pipelines.common.safe_paths import safe_join
from pipelines.report import html
from pipelines.report.assets import Assets
from pipelines.report.steps import STATS_NAME
from pipelines.storage import Storage


INDEX_NAME = "index.html"


def write_report(
    storage: Storage,
    output: str,
    title: str,
    subtitle: str,
    sections: list[tuple[str, str, str]],
    assets: Assets,
    stats: MergedStats,
    pages: dict[str, str] | None = None,
) -> str:
    """Writes the report folder; returns the URI of its ``index.html``.

    ``sections``: ``(anchor, heading, HTML)`` in page order; ``pages``: other documents beside it by file name.
    """
    page = html.page(title, subtitle, sections)
    assets.write(storage, output)
    for name, document in sorted((pages or {}).items()):
        storage.write_bytes(safe_join(output, name, what="report page name"), document.encode("utf-8"))
    storage.write_bytes(safe_join(output, STATS_NAME), json.dumps(stats.to_json(), sort_keys=True).encode())
    index = safe_join(output, INDEX_NAME)
    storage.write_bytes(index, page.encode("utf-8"))  # last: a report with an index is complete
    return index
