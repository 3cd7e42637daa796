"""The report's plots: matplotlib on its Agg backend (no display), each figure returned as PNG bytes.

Every function takes plain numbers (counts, arrays) so it can be checked without a label output. A plot whose data
is absent is not drawn; the caller says so in the report instead.
"""

import io
from collections.abc import Mapping, Sequence

import matplotlib


matplotlib.use("Agg")  # before pyplot: no display on workers or CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


TIER_COLORS = {"gold": "#d4a017", "silver": "#8c9aa8", "bronze": "#b0703a", "reject": "#c0392b"}
OUTCOME_COLORS = {"accepted": "#2e8b57", "rejected": "#c0392b", "errored": "#7f8c8d"}
_DPI = 100


def tier_color(tier: str) -> str:
    """The tier's colour in every plot (grey for a tier this report does not know)."""
    return TIER_COLORS.get(tier, "#555555")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    # No timestamps or software tags: the same data gives the same bytes.
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def bar_counts(counts: Mapping[str, int], title: str, xlabel: str, colors: Mapping[str, str] | None = None) -> bytes:
    """Horizontal bars of ``counts`` (in the given order), each labelled with its count."""
    names = list(counts)
    values = [int(counts[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.45 * max(len(names), 2) + 1.0))
    palette = [(colors or {}).get(n, "#4a7ab7") for n in names]
    bars = ax.barh(range(len(names)), values, color=palette)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.bar_label(bars, padding=3)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    return _png(fig)


def stacked_levels(counts: Mapping[str, Mapping[str, int]], levels: Sequence[str], title: str) -> bytes:
    """Stacked bars: per group (tier), persons at each level (e.g. occlusion none / partial / heavy)."""
    groups = list(counts)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bottom = np.zeros(len(groups))
    shades = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, max(len(levels), 1)))
    for level, shade in zip(levels, shades, strict=False):
        heights = np.array([counts[g].get(level, 0) for g in groups], dtype=float)
        ax.bar(groups, heights, bottom=bottom, label=level, color=shade)
        bottom += heights
    ax.set_ylabel("persons")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str
) -> bytes:
    """Line plot of named ``(x, y)`` series (e.g. a sparsification curve and its oracle)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (xs, ys) in series.items():
        ax.plot(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), label=name, linewidth=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def scatter_by_tier(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str
) -> bytes:
    """One point per person, coloured by tier: ``{tier: (x (N,), y (N,))}``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for tier, (xs, ys) in points.items():
        ax.scatter(xs, ys, s=10, alpha=0.6, color=tier_color(tier), label=f"{tier} ({len(xs)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def binned_by_tier(
    counts: Mapping[str, np.ndarray], edges: np.ndarray, title: str, xlabel: str, *, log_x: bool = False
) -> bytes:
    """One step histogram per tier from counts on fixed bins: ``counts[tier]`` is `(len(edges) + 1,)`, its first
    and last slots the values below and above the edges (drawn in the first and last bin, and said in the legend)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    centres = (edges[:-1] * edges[1:]) ** 0.5 if log_x else (edges[:-1] + edges[1:]) / 2
    for tier, dense in counts.items():
        weights = np.asarray(dense[1:-1], dtype=float)
        weights[0] += dense[0]
        weights[-1] += dense[-1]
        outside = f", {int(dense[0]) + int(dense[-1])} outside" if dense[0] or dense[-1] else ""
        label = f"{tier} ({int(dense.sum())}{outside})"
        ax.hist(
            centres, bins=edges, weights=weights, histtype="step", linewidth=2, color=tier_color(tier), label=label
        )
    if log_x:
        ax.set_xscale("log")
        total = sum(counts.values(), np.zeros(len(edges) + 1))
        occupied = np.flatnonzero(total[1:-1] + np.r_[total[0], np.zeros(len(edges) - 3), total[-1]])
        if len(occupied):  # the fixed edges span decades; show those that hold persons
            ax.set_xlim(edges[max(occupied[0], 0)], edges[min(occupied[-1] + 1, len(edges) - 1)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("persons")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def boxes(quantiles: Mapping[str, np.ndarray], title: str, ylabel: str, *, width: float = 7.0) -> bytes:
    """One box per name from its 5, 25, 50, 75 and 95 % quantiles (``quantiles[name]``: `(5,)`): whiskers 5-95 %."""
    names = list(quantiles)
    fig, ax = plt.subplots(figsize=(width, 3.6))
    stats = [
        {"label": n, "whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "fliers": []}
        for n, q in ((n, np.asarray(quantiles[n], dtype=float)) for n in names)
    ]
    ax.bxp(stats, showfliers=False)
    crowded = len(names) > 10
    ax.set_xticks(
        range(1, len(names) + 1), names, rotation=60 if crowded else 0, ha="right" if crowded else "center",
        fontsize="small",
    )  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def distribution(values: np.ndarray, title: str, xlabel: str, ylabel: str = "shards") -> bytes:
    """A histogram of one number per item (e.g. per shard): how the items spread, whatever their count."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    ax.hist(finite, bins=min(30, max(len(np.unique(finite)), 1)), color="#4a7ab7")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({len(finite)})")
    return _png(fig)
