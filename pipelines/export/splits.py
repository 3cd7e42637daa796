"""Leakage-free splits (``split=train:0.9,val:0.05,test:0.05``): whole groups of images go to one split.

**The group of an image**, first that applies:

1. its near-duplicate group (``dpmesh-shard``'s ``_near_duplicates.parquet``, named by its smallest key): the rows'
   ``near_dup_group`` column when the labels have it, else the shard set's file, read once on the driver and
   handed to each shard's task as that shard's part (:attr:`~pipelines.export.records.ExportTask.near_dup_groups`);
2. the match of ``split.group_by`` in the image's ``source_uri`` (its first group if the pattern has one), e.g. a
   video id or a photo session;
3. the image's own key.

**The split of a group** (:meth:`Splitter.split_of`): the first 8 bytes of BLAKE2b of the group id (UTF-8) as a
number ``u`` in [0, 1), against the cumulative fractions in the order given (``train:0.9,val:0.05,...``: ``u <
0.9`` is train, ``u < 0.95`` val, ...). It depends on the id alone: the same on every worker and every run, and a
group keeps its split when the corpus grows as long as its id does (a near-duplicate group is renamed only when a
member with a smaller key joins it; the shards holding it are then exported again, see
:func:`near_dup_digest`). The fractions are of groups, so of images only on average.

**What the card reports** (:func:`merge_split_blocks`): per split the persons, images and groups, and how many
groups of more than one image *would have straddled splits without grouping*: their images, each split by its own
key, would not all have landed in one split. Each shard's marker holds its part (:class:`SplitTally`): counts per
split, and per shared group (one not named by the image's own key) a bit mask of the splits its images' own keys
fall in; the card ORs the masks over shards.

**What the order of the rules leaves** (reported, not hidden): the rules are not merged into one grouping. An image
in a near-duplicate group goes with that group even when ``split.group_by`` matches it, so a near-duplicate pair
across two ``group_by`` groups (the same scene in two videos) can put an image of a ``group_by`` group into another
split than the rest of it. The card counts the ``group_by`` groups this happened to
(``group_by_groups_split_by_near_duplicates``): the tally keeps, per ``group_by`` match of an image that a
near-duplicate group took, the splits such images went to.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.config.export import SplitConfig
from schemas.annotations import NEAR_DUP_GROUP


NEAR_DUP_COLUMN = NEAR_DUP_GROUP
"""The annotation column holding an image's near-duplicate group (null for an image in none)."""

GROUP_NEAR_DUPLICATE = "near_duplicate"
GROUP_BY = "group_by"
GROUP_KEY = "key"
GROUP_SOURCES = (GROUP_NEAR_DUPLICATE, GROUP_BY, GROUP_KEY)
"""Where an image's group came from, in the order they are tried."""

_HASH_BYTES = 8
_HASH_RANGE = float(1 << (8 * _HASH_BYTES))


class Splitter:
    """Assigns groups to splits and images to groups (module docstring); a plain object, pickled to workers."""

    def __init__(self, cfg: SplitConfig) -> None:
        self.parts = cfg.parts()
        if not self.parts:
            raise ValueError("a Splitter needs split.fractions")
        self.names = tuple(name for name, _ in self.parts)
        self.group_by = cfg.group_by
        self._pattern = re.compile(cfg.group_by) if cfg.group_by else None

    def split_of(self, group: str) -> str:
        """The split of ``group`` (a group id): a pure function of the id."""
        digest = hashlib.blake2b(group.encode("utf-8"), digest_size=_HASH_BYTES).digest()
        u = int.from_bytes(digest, "big") / _HASH_RANGE
        cumulative = 0.0
        for name, fraction in self.parts:
            cumulative += fraction
            if u < cumulative:
                return name
        return self.names[-1]  # the fractions sum to 1 within rounding: u just below 1 lands in the last

    def group_of(self, image_key: str, source_uri: str | None, near_dup_group: str | None) -> tuple[str, str]:
        """``(group id, where it came from)`` of one image (one of :data:`GROUP_SOURCES`)."""
        if near_dup_group:
            return near_dup_group, GROUP_NEAR_DUPLICATE
        matched = self.matched(source_uri)
        if matched is not None:
            return matched, GROUP_BY
        return image_key, GROUP_KEY

    def matched(self, source_uri: str | None) -> str | None:
        """The ``split.group_by`` group of an image path (its match's first group, else the whole match), or None
        when there is no pattern, no path, no match or an empty one."""
        if self._pattern is None or not source_uri:
            return None
        match = self._pattern.search(source_uri)
        if match is None:
            return None
        value = match.group(1) if match.re.groups else match.group(0)
        return value or None


def near_dup_digest(groups: Mapping[str, str] | None) -> str | None:
    """SHA-256 (hex) of a shard's near-duplicate groups ``{key: group}``; None when it has none. An export marker
    records it when the groups came from the shard set's file, so a shard whose groups changed (an append joined
    its images to others) is exported again into the splits its new groups take."""
    if not groups:
        return None
    return hashlib.sha256(json.dumps(sorted(groups.items()), separators=(",", ":")).encode()).hexdigest()


@dataclass
class SplitTally:
    """One shard's part of the split counts (its marker's ``splits``).

    Attributes:
        persons, images: Per split, what was exported into it.
        key_groups: Per split, images grouped by their own key (each its own group, in this shard only).
        groups: Per shared group id, a bit mask over the splits (bit ``i``: ``names[i]``) its images' own keys fall
            in, for the straddling count.
        sources: Images by where their group came from (:data:`GROUP_SOURCES`).
        taken: Per ``split.group_by`` match of an image a near-duplicate group took, a bit mask of the splits such
            images went to.
    """

    persons: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    key_groups: Counter[str] = field(default_factory=Counter)
    groups: dict[str, int] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)
    taken: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        splitter: Splitter,
        image_key: str,
        group: str,
        source: str,
        split: str,
        persons: int,
        matched: str | None,
    ) -> None:
        """Counts one exported image of ``persons`` persons in ``split`` (``matched``: its ``split.group_by``
        match, None without one)."""
        self.persons[split] += persons
        self.images[split] += 1
        self.sources[source] += 1
        if source == GROUP_KEY:
            self.key_groups[split] += 1
        else:
            own = splitter.names.index(splitter.split_of(image_key))
            self.groups[group] = self.groups.get(group, 0) | (1 << own)
        if source == GROUP_NEAR_DUPLICATE and matched is not None:
            self.taken[matched] = self.taken.get(matched, 0) | (1 << splitter.names.index(split))

    def block(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The marker's ``splits``: every split named (zeros included), groups sorted by id."""
        return {
            "persons": {name: self.persons[name] for name in names},
            "images": {name: self.images[name] for name in names},
            "key_groups": {name: self.key_groups[name] for name in names},
            "groups": dict(sorted(self.groups.items())),
            "group_sources": {source: self.sources[source] for source in GROUP_SOURCES},
            "taken_by_near_duplicates": dict(sorted(self.taken.items())),
        }


def merge_split_blocks(blocks: Iterable[dict[str, Any] | None], splitter: Splitter) -> dict[str, Any]:
    """The card's and ``stats.json``'s ``splits`` from the shards' blocks (None for a shard that exported nothing).

    Returns:
        ``{"fractions", "group_by", "splits": {name: {"persons", "images", "groups"}}, "groups": <all groups>,
        "shared_groups": <groups of more than one image, or named by a near-duplicate group or group_by>,
        "groups_straddling": <shared groups whose images' own keys fall in more than one split>,
        "group_by_groups_split_by_near_duplicates": <group_by groups with images in more than one split>,
        "group_sources": {source: images}}``.
    """
    names = splitter.names
    persons: Counter[str] = Counter()
    images: Counter[str] = Counter()
    key_groups: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    masks: dict[str, int] = {}
    taken: dict[str, int] = {}
    for block in blocks:
        if not block:
            continue
        persons.update(block["persons"])
        images.update(block["images"])
        key_groups.update(block["key_groups"])
        sources.update(block["group_sources"])
        for group, mask in block["groups"].items():
            masks[group] = masks.get(group, 0) | int(mask)
        for matched, mask in (block.get("taken_by_near_duplicates") or {}).items():
            taken[matched] = taken.get(matched, 0) | int(mask)
    # A group_by group's images went where near-duplicate groups took them, and the rest (if any: then it is among
    # the shared groups) to the group's own split.
    home = {name: 1 << i for i, name in enumerate(names)}
    split_apart = 0
    for matched, mask in taken.items():
        rest = home[splitter.split_of(matched)] if matched in masks else 0
        split_apart += _bits(mask | rest) > 1
    shared_by_split = Counter(splitter.split_of(group) for group in masks)
    groups = {name: key_groups[name] + shared_by_split[name] for name in names}
    return {
        "fractions": dict(splitter.parts),
        "group_by": splitter.group_by,
        "splits": {name: {"persons": persons[name], "images": images[name], "groups": groups[name]} for name in names},
        "groups": sum(groups.values()),
        "shared_groups": len(masks),
        "groups_straddling": sum(1 for mask in masks.values() if _bits(mask) > 1),
        "group_by_groups_split_by_near_duplicates": split_apart,
        "group_sources": {source: sources[source] for source in GROUP_SOURCES},
    }


def _bits(mask: int) -> int:
    """How many splits a bit mask names."""
    return bin(mask).count("1")
