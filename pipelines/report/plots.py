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


def histograms_by_tier(
    values: Mapping[str, np.ndarray],
    title: str,
    xlabel: str,
    *,
    bins: int | np.ndarray = 20,
    value_range: tuple[float, float] | None = None,
    log_x: bool = False,
) -> bytes:
    """One step histogram per tier on shared bins (persons per bin)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    finite = {t: v[np.isfinite(v)] for t, v in values.items()}
    everything = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(1)])
    if log_x:
        positive = everything[everything > 0]
        low, high = (positive.min(), positive.max()) if len(positive) else (1.0, 10.0)
        edges = np.geomspace(low, max(high, low * 1.01), (bins if isinstance(bins, int) else 20) + 1)
        ax.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(everything, bins=bins, range=value_range)
    for tier, v in finite.items():
        ax.hist(v, bins=edges, histtype="step", linewidth=2, color=tier_color(tier), label=f"{tier} ({len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("persons")
    ax.set_title(title)
    ax.legend(fontsize="small")
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


def boxplots(columns: Mapping[str, np.ndarray], title: str, ylabel: str, *, width: float = 7.0) -> bytes:
    """One box per named column (whiskers 5-95 %, no outlier dots: large outputs would draw millions)."""
    names = list(columns)
    fig, ax = plt.subplots(figsize=(width, 3.6))
    data = [v[np.isfinite(v)] for v in columns.values()]
    ax.boxplot(data, whis=(5, 95), showfliers=False)
    crowded = len(names) > 10
    ax.set_xticks(
        range(1, len(names) + 1), names, rotation=60 if crowded else 0, ha="right" if crowded else "center",
        fontsize="small",
    )  # fmt: skip
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def per_shard(shards: Sequence[str], outcomes: Mapping[str, Sequence[int]], error_rate: Sequence[float]) -> bytes:
    """Per shard: persons accepted / rejected / errored (stacked bars) and the error rate (line, right axis).

    Above 60 shards the names are dropped from the axis and bars become a filled profile in shard order.
    """
    x = np.arange(len(shards))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bottom = np.zeros(len(shards))
    for name, values in outcomes.items():
        heights = np.asarray(values, dtype=float)
        ax.bar(x, heights, bottom=bottom, label=name, color=OUTCOME_COLORS.get(name, "#4a7ab7"), width=0.9)
        bottom += heights
    ax.set_ylabel("persons")
    if len(shards) <= 60:
        ax.set_xticks(x, [s.removeprefix("shard-") for s in shards], rotation=90, fontsize="x-small")
    else:
        ax.set_xlabel("shard (in name order)")
    rate_axis = ax.twinx()
    rate_axis.plot(x, 100 * np.asarray(error_rate, dtype=float), color="black", marker=".", label="error rate")
    rate_axis.set_ylabel("errored / persons in (%)")
    rate_axis.set_ylim(bottom=0)
    ax.set_title("Persons per shard and error rate")
    ax.legend(loc="upper left", fontsize="small")
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
