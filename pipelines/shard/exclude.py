"""The benchmark overlap guard: corpus images that copy a benchmark image are left out (``benchmark_overlap``).

``exclude.images=<folder|glob|prefix>`` names the benchmark images, hashed once at launch on the driver
(:func:`load_benchmark`: sha1 and perceptual hash of each); ``exclude.hashes=<txt|parquet>`` gives the hashes
precomputed. The resulting :class:`BenchmarkHashes` travels to the shard writers with the pipeline (a benchmark is
thousands of images, not a corpus), where :class:`BenchmarkMatcher` checks every image as it is sharded: the same
sha1 (an exact copy) or a perceptual hash within ``exclude.threshold`` bits (a near copy), found through the same
multi-index bands as the near-duplicate groups, never by comparing every pair.

The matched image becomes an error row (stage ``shard.dedup``, reason ``benchmark_overlap``, naming the benchmark
image and the distance), so it is counted in the manifest with every other file left out. The list's digest is
part of each shard's identity: a rerun with another benchmark redoes the shards.
"""

from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipelines.config import ConfigError, InputConfig, ShardJobConfig
from pipelines.shard.listing import list_corpus
from pipelines.shard.near_duplicates import BAND_BITS, BANDS, band_value, flip_masks, search_radius
from pipelines.shard.perceptual_hash import (
    HASH_BITS,
    HASH_NAME,
    UnhashableImageError,
    from_stored,
    hamming,
    perceptual_hash,
    to_hex,
)
from pipelines.shard.probe import ImageRejectedError, probe_image
from pipelines.storage import ObjectNotFoundError, Storage


logger = logging.getLogger(__name__)

_READERS = 8


@dataclass(frozen=True)
class BenchmarkHashes:
    """The benchmark images to keep out of the corpus.

    Attributes:
        source: The ``exclude.images`` or ``exclude.hashes`` it came from.
        names: A name per image (its path under the benchmark folder, or the list's ``name``).
        sha1s: Hex sha1 of each image's bytes ("" when the list gives none).
        hashes: Perceptual hash of each (None when it could not be decoded: then only its sha1 matches).
        threshold: Hamming bits within which a corpus image is a near copy.
        unreadable: Benchmark images that could not be read or decoded at all (logged, recorded in the manifest).
    """

    source: str
    names: tuple[str, ...]
    sha1s: tuple[str, ...]
    hashes: tuple[int | None, ...]
    threshold: int
    unreadable: int = 0

    @property
    def digest(self) -> str:
        """sha1 of the list (sorted entries and threshold): what a shard's identity records of it."""
        entries = sorted(zip(self.sha1s, (to_hex(h) if h is not None else "" for h in self.hashes), strict=True))
        return hashlib.sha1(repr((self.threshold, entries)).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What the manifest records of it."""
        return {
            "source": self.source,
            "images": len(self.names),
            "unreadable": self.unreadable,
            "threshold": self.threshold,
            "digest": self.digest,
        }


def load_benchmark(storage: Storage, cfg: ShardJobConfig) -> BenchmarkHashes | None:
    """The benchmark of ``cfg.exclude`` (None without one), hashed or read at launch.

    Raises:
        ConfigError: a list that cannot be read or holds no hash, or a folder that lists no image.
    """
    if cfg.exclude.hashes:
        return _read_list(storage, cfg.exclude.hashes, cfg.exclude_threshold)
    if not cfg.exclude.images:
        return None
    listed = [f for f in list_corpus(storage, InputConfig(images=cfg.exclude.images)) if f.problem is None]
    if not listed:
        raise ConfigError(f"exclude.images={cfg.exclude.images!r} lists no files; check the folder or prefix")

    def hash_one(uri: str) -> tuple[str, int | None] | None:
        try:
            data = storage.read_bytes(uri)
            probe_image(data, max_image_pixels=cfg.shard.max_image_pixels, decode=False)
        except (OSError, ImageRejectedError) as exc:
            logger.warning("exclude.images: %s cannot be used: %s", uri, exc)
            return None
        try:
            return hashlib.sha1(data).hexdigest(), perceptual_hash(data)
        except UnhashableImageError:
            return hashlib.sha1(data).hexdigest(), None

    with ThreadPoolExecutor(max_workers=_READERS) as pool:  # object stores reward concurrent reads
        results = list(pool.map(hash_one, [f.uri for f in listed]))
    usable = [(f.relpath, r) for f, r in zip(listed, results, strict=True) if r is not None]
    return BenchmarkHashes(
        source=cfg.exclude.images,
        names=tuple(name for name, _ in usable),
        sha1s=tuple(r[0] for _, r in usable),
        hashes=tuple(r[1] for _, r in usable),
        threshold=cfg.exclude_threshold,
        unreadable=len(listed) - len(usable),
    )


def _read_list(storage: Storage, uri: str, threshold: int) -> BenchmarkHashes:
    try:
        content = storage.read_bytes(uri)
    except ObjectNotFoundError:
        raise ConfigError(f"exclude.hashes={uri!r} does not exist") from None
    names: list[str] = []
    sha1s: list[str] = []
    hashes: list[int | None] = []
    try:
        if uri.lower().endswith(".parquet"):
            rows = pq.read_table(io.BytesIO(content)).to_pylist()
            for i, row in enumerate(rows):
                value = row["phash"]
                hashes.append(_hex_hash(value) if isinstance(value, str) else from_stored(value))
                sha1s.append(str(row.get("sha1") or ""))
                names.append(str(row.get("name") or f"row {i}"))
        else:
            for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
                text = line.split("#", 1)[0].strip()
                if text:
                    hashes.append(_hex_hash(text))
                    sha1s.append("")
                    names.append(f"line {number}")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"exclude.hashes={uri!r} is not a hash list ({type(exc).__name__}: {exc}); give one "
            f"{HASH_BITS // 4}-hex-digit hash ({HASH_NAME}) a line, or a Parquet file with a phash column"
        ) from None
    if not hashes or any(h is not None and not 0 <= h < 1 << HASH_BITS for h in hashes):
        raise ConfigError(f"exclude.hashes={uri!r} holds no hash, or one that is not {HASH_BITS} bits ({HASH_NAME})")
    return BenchmarkHashes(uri, tuple(names), tuple(sha1s), tuple(hashes), threshold)


def _hex_hash(text: str) -> int:
    """A hash written in hex: exactly the digits :func:`~pipelines.shard.perceptual_hash.to_hex` writes (a hash of
    another version or length is refused, not read as another number)."""
    if len(text) != HASH_BITS // 4:
        raise ValueError(f"{text!r} has {len(text)} hex digits, a {HASH_NAME} hash {HASH_BITS // 4}")
    return int(text, 16)


class BenchmarkMatcher:
    """Finds the benchmark image a corpus image copies, if any (built where the shards are written)."""

    def __init__(self, benchmark: BenchmarkHashes) -> None:
        self._benchmark = benchmark
        self._by_sha1 = {sha1: i for i, sha1 in enumerate(benchmark.sha1s) if sha1}
        self._masks = flip_masks(BAND_BITS, search_radius(benchmark.threshold)).tolist()
        self._bands: list[dict[int, list[int]]] = [{} for _ in range(BANDS)]
        for i, value in enumerate(benchmark.hashes):
            if value is not None:
                for band in range(BANDS):
                    self._bands[band].setdefault(band_value(value, band), []).append(i)

    def match(self, sha1: str, phash: int | None) -> str | None:
        """Why the image with ``sha1`` and ``phash`` is a benchmark copy (the error message), or None."""
        exact = self._by_sha1.get(sha1)
        if exact is not None:
            return f"same bytes as benchmark image {self._benchmark.names[exact]!r}"
        if phash is None:
            return None
        best: tuple[int, str] | None = None
        for band in range(BANDS):  # the multi-index search of pipelines.shard.near_duplicates, one hash at a time
            value, table = band_value(phash, band), self._bands[band]
            for mask in self._masks:
                for i in table.get(value ^ mask, ()):
                    distance = hamming(phash, self._benchmark.hashes[i] or 0)
                    if distance <= self._benchmark.threshold and (best is None or distance < best[0]):
                        best = (distance, self._benchmark.names[i])
        if best is None:
            return None
        return (
            f"near duplicate of benchmark image {best[1]!r}: perceptual hashes {best[0]} bits apart "
            f"(exclude.threshold={self._benchmark.threshold})"
        )
