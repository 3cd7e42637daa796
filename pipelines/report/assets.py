"""The report's files: names made from data are checked, written inside the report folder only, linked by encoded URL.

Plots and gallery tiles are named after values from the label output or the evaluation document (sample ids, tier
names, occlusion column names, metric names). Each such name is one plain path segment
(`pipelines.common.safe_paths.check_segment`) and every write goes through `safe_join`, so no value can place a
file outside ``output=``. The page links a file by its percent-encoded relative path (`url`): a name holding ``#``,
``?`` or ``%`` is a fragment, a query or an escape in a URL, and would show as a broken image if linked raw.
"""

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from pipelines.common.safe_paths import UnsafeName, check_segment, safe_join, validate_sample_id
from pipelines.storage import Storage


ASSETS = "assets"
# Why a row cannot be a gallery tile (its file would be named after the value); keys of `gallery_problem`.
INVALID_SAMPLE_ID = "sample_id is not <key>_p<person index>"
INVALID_TIER = "quality_tier cannot name a folder"


def url(path: str) -> str:
    """``path`` (relative, ``/``-separated) as it goes in an ``src``/``href``: every segment percent-encoded."""
    return quote(path, safe="/")


class Assets:
    """Files of the report, by path relative to ``index.html`` (``assets/...``); written when the page is."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes, folder: Sequence[str] = ()) -> str:
        """Keeps ``data`` as ``assets/<folder...>/<name>`` and returns its URL for the page.

        Raises:
            UnsafeName: ``name`` or a folder is not one plain path segment.
        """
        segments = [check_segment(part, "report file name") for part in (*folder, name)]
        path = "/".join((ASSETS, *segments))
        self.files[path] = data
        return url(path)

    def write(self, storage: Storage, output: str) -> None:
        """Writes every file under ``output`` (each segment was checked when added; the join checks again)."""
        for path, data in sorted(self.files.items()):
            storage.write_bytes(safe_join(output, *path.split("/"), what="report file name"), data)


def gallery_problem(row: dict[str, Any]) -> str | None:
    """Why ``row`` (``sample_id``, ``quality_tier``) cannot be a gallery tile, or None when it can.

    A tile is written as ``assets/gallery/<tier>/<sample_id>.png``: a sample id outside the one grammar, or a tier
    that is not one plain path segment, is left out of the gallery (and counted), never used as a path.
    """
    try:
        # Both checks: the grammar, and one segment (the grammar's ``$`` also admits a trailing newline).
        check_segment(validate_sample_id(row.get("sample_id", "")), "sample_id")
    except UnsafeName:
        return INVALID_SAMPLE_ID
    try:
        check_segment(row.get("quality_tier", ""), "quality_tier")
    except UnsafeName:
        return INVALID_TIER
    return None
