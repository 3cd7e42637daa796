"""The review page in a real browser (slow): headless Chromium driven over the DevTools protocol on a pipe
(tests/report/chromium_cdp.py) reviews persons of the demo corpus's labels with the keyboard, reloads (decisions
kept), downloads review.json, and dpmesh-refilter applies that file.

``DPMESH_REVIEW_SCREENSHOT=<png>`` keeps the page's screenshot (the README's is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.common.reviews import label_run_of, parse_review
from pipelines.config import LabelJobConfig, RefilterJobConfig, ReportJobConfig, ShardJobConfig, compose_config
from pipelines.label.job import run as label
from pipelines.refilter.job import run as refilter
from pipelines.report.job import run as write_report
from pipelines.report.review_page import PAGE_NAME, read_page_data
from pipelines.shard.job import run as shard
from tests.report.chromium_cdp import CHROMIUM, Chromium


REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CORPUS = REPO_ROOT / "pipelines" / "sample_corpus"
REVIEW = 8


def _report(labels: Path, output: Path, *extra: str) -> dict[str, Any]:
    keys = [f"input.labels={labels}", f"output={output}", f"review={REVIEW}", "report.per_tier=2",
            "log_level=WARNING", *extra]  # fmt: skip
    result: dict[str, Any] = write_report(compose_config("dpmesh_report", keys, ReportJobConfig))
    return result


def _state(browser: Chromium) -> dict[str, Any]:
    state: dict[str, Any] = browser.evaluate("window.dpmeshReview.state()")
    return state


@pytest.mark.slow
def test_a_reviewer_reviews_with_the_keyboard_reloads_downloads_and_refilter_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: run `make system-packages` (Debian package chromium)")
    monkeypatch.chdir(tmp_path)  # the labels named as `make demo` names them: the page shows no path of this machine
    shards, labels = Path("demo_output/shards"), Path("demo_output/labels")
    shard(compose_config("dpmesh_shard", [
        f"input.images={SAMPLE_CORPUS / 'images'}", f"input.annotations={SAMPLE_CORPUS / 'person_keypoints.json'}",
        f"output={shards}", "shard.max_samples=4", "log_level=WARNING",
    ], ShardJobConfig))  # fmt: skip
    label(compose_config("dpmesh_label", [f"input.shards={shards}", f"output={labels}", "log_level=WARNING",
                                          "progress_interval_s=0"], LabelJobConfig))  # fmt: skip
    report = tmp_path / "report"
    _report(labels, report)
    page = report / PAGE_NAME
    assert "Review the labels of demo_output/labels" in page.read_text()
    persons = read_page_data(page.read_text())["persons"]
    assert len(persons) == REVIEW
    ids = [p["sample_id"] for p in persons]
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    with Chromium(width=1280, height=900) as browser:
        browser.open(page)
        browser.wait_until("document.body.getAttribute('data-ready') === '1'")
        assert browser.evaluate("document.getElementById('view').naturalWidth") == 512, "the image loaded from disk"
        assert browser.evaluate("document.body.dataset.decided") == "0"
        browser.press("a")  # person 1: accept
        browser.press("r")  # person 2: reject, reason 2 (wrong_pose)
        assert browser.evaluate("document.getElementById('reasons').hidden") is False, "the reasons are offered"
        browser.press("2")
        browser.press("s")  # person 3: skip
        browser.press("r")  # person 4: reject with no reason
        browser.press("Enter")
        browser.press("ArrowLeft")  # back to person 4 ...
        browser.press("u")  # ... and undo: undecided again
        browser.press("r")  # person 4 again: reject, then think better of it
        browser.press("Escape")
        browser.press("a")  # person 4: accept
        browser.press("o")  # the photo without the overlay
        assert browser.evaluate("document.body.dataset.view") == "photo"
        browser.press("n")  # the name field, typed into, then left with Enter
        browser.type_text("Ann Reviewer")
        browser.press("Enter")
        browser.press("b")
        state = _state(browser)
        assert state["position"] == 3
        assert state["reviewer"] == "Ann Reviewer"
        decided = {sid: (d["decision"], d["reason"]) for sid, d in state["decisions"].items()}
        assert decided == {ids[0]: ("accept", None), ids[1]: ("reject", "wrong_pose"), ids[3]: ("accept", None)}
        assert browser.evaluate("document.getElementById('count').textContent").startswith(f"3 / {REVIEW} decided")

        browser.reload()  # decisions, place and name are kept in the browser
        browser.wait_until("document.body.getAttribute('data-ready') === '1'")
        assert _state(browser) == state
        assert browser.evaluate("document.body.dataset.decided") == "3"
        assert browser.evaluate("document.getElementById('reviewer').value") == "Ann Reviewer"

        browser.press("s")  # an undecided person, the reasons on screen for the screenshot
        browser.press("r")
        shot = tmp_path / "review.png"
        browser.screenshot(shot)
        browser.press("Escape")

        browser.allow_downloads(downloads)
        browser.press("d")
        began = browser.wait_for_download()
        assert began["suggestedFilename"] == "review.json"

        # a page made again for the same labels (another seed) finds the decisions: one key per label run
        again = tmp_path / "report_seed1"
        _report(labels, again, "report.seed=1")
        browser.open(again / PAGE_NAME)
        browser.wait_until("document.body.getAttribute('data-ready') === '1'")
        assert _state(browser)["decisions"] == state["decisions"]

        saved = downloads / "review.json"
        review = parse_review(saved.read_bytes(), str(saved))
        assert review.reviewer == "Ann Reviewer"
        identity = label_run_of(str(labels), json.loads((labels / "_summary.json").read_text()))
        assert review.label_run == identity
        assert identity.labels == os.path.realpath(tmp_path / labels), "the identity holds the location resolved"
        assert {d.sample_id: (d.decision, d.reason) for d in review.decisions} == decided
        assert all(d.shard == p["shard"] and d.model_id == p["model_id"] for d in review.decisions
                   for p in persons if p["sample_id"] == d.sample_id)  # fmt: skip

        output = tmp_path / "reviewed"
        keys = [f"input={labels}", f"output={output}", "filter=off", f"review={saved}", "log_level=WARNING"]
        summary = refilter(compose_config("dpmesh_refilter", keys, RefilterJobConfig))
        files = [(folder, p) for folder in ("annotations", "rejected") for p in sorted((output / folder).glob("*"))]
        rows = {r["sample_id"]: (folder, r) for folder, p in files for r in pq.read_table(p).to_pylist()}
        assert rows[ids[1]][0] == "rejected"
        assert rows[ids[1]][1]["review"] == "reject"
        assert "reviewed_reject" in rows[ids[1]][1]["reasons"]
        assert rows[ids[0]][1]["review"] == rows[ids[3]][1]["review"] == "accept"
        assert rows[ids[2]][1]["review"] is None
        assert summary["review"]["applied"]["applied_reject"] == 1
        assert summary["review"]["applied"]["applied_accept"] == 2

        # the refiltered output is another label run: its page starts with no decisions
        other = tmp_path / "report_reviewed"
        _report(output, other)
        browser.open(other / PAGE_NAME)
        browser.wait_until("document.body.getAttribute('data-ready') === '1'")
        assert _state(browser)["decisions"] == {}

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert pixels.shape == (900, 1280, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3)[::53], axis=0)) > 100, "text and a crop, not a flat page"
    keep = os.environ.get("DPMESH_REVIEW_SCREENSHOT")  # where to keep it (the README's screenshot is made this way)
    if keep:
        shutil.copy(shot, keep)
