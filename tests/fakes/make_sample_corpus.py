"""Regenerates the sample corpus bundled with the package (``pipelines/sample_corpus/``), used by ``make demo``.

Run: ``python -m tests.fakes.make_sample_corpus``. Seeded: the output is the same bytes every time.
"""

import json
import os
import shutil

from tests.fakes.corpus import broken_files, coco_document, make_images, write_corpus


TARGET = os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "sample_corpus")


def main() -> None:
    images = make_images(8, seed=2024, width=640, height=480, persons=(1, 3), formats=("JPEG", "JPEG", "JPEG", "WEBP"))
    shutil.rmtree(TARGET, ignore_errors=True)
    # One truncated file shows how bad inputs are reported rather than crashing the run.
    extra = {"images/broken_truncated.jpg": broken_files(images[0].data)["broken/truncated.jpg"]}
    write_corpus(TARGET, images, extra=extra, subdir="images")
    with open(os.path.join(TARGET, "person_keypoints.json"), "w") as f:
        json.dump(coco_document(images), f, indent=1)


if __name__ == "__main__":
    main()
