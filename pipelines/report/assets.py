"""The report's files: names made from data are checked, written inside the report folder only, linked by encoded URL.

Plots and gallery tiles are named after values from the label output or the evaluation document (sample ids, tier
names, occlusion column names, metric names). Each such name is one plain path segment
(`pipelines.common.safe_paths.check_segment`) and every write goes through `safe_join`, so no value can place a
file outside ``output=``. The page links a file by its percent-encoded relative path (`url`): a name holding ``#``,
``?`` or ``%`` is a fragment, a query or an escape in a URL, and would show as a broken image if linked raw.
"""

from collections.abc import Sequence
from urllib.parse import quote

from pipelines.common.safe_paths import check_segment, safe_join
from pipelines.storage import Storage


ASSETS = "assets"


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
