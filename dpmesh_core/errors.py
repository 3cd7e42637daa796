"""Exceptions that callers (the pipeline) turn into error / rejection rows."""

from __future__ import annotations


class InvalidPersonInput(ValueError):  # noqa: N818 (name fixed by the pipeline contract)
    """A person's input cannot be processed; `reason` is a short machine-readable code.

    Reasons: `bad_image_shape`, `bad_keypoints_shape`, `nonfinite_keypoints`, `no_valid_keypoints`,
    `degenerate_bbox`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class CheckpointKeyError(KeyError):
    """A checkpoint key is unknown (neither used nor on the ignore list) or an expected key is missing."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
