"""Plots of one search stage's `SearchResult` (the per-layer gain heatmap, score against cost with the Pareto front) and
of `jetvit findings`' trained models against estimated latency.
Images are written atomically (a reader never sees a partial file; `io.atomic_save_figure`)."""

import os
from pathlib import Path

from ..io import atomic_save_figure
from .beam import SearchResult


def _save_figure(figure, path: str | os.PathLike) -> Path:
    """Both plots' settings (150 dpi, a tight bounding box), saved atomically."""
    return atomic_save_figure(figure, path, dpi=150, bbox_inches="tight")


def plot_layer_gain(result: SearchResult, path: str | os.PathLike) -> Path:
    """A 1 x L heatmap: per layer (0-based), the objective's gain from switching only that layer of the start to the
    stage's new type (full attention in stage 2); blank where not evaluated. Each layer's tick names its type in the
    start (l linear, w window, f full): in stage 2 a gain over a window layer costs less than one over a linear layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gains = np.array(result.layer_gain["gains"], dtype=float)
    num_layers = len(gains)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.42 * num_layers + 2.5), 2.0))
    image = axes.imshow(np.ma.masked_invalid(gains)[None], cmap="viridis", aspect="equal")
    axes.set_xticks(range(num_layers), [f"{i}\n{kind[0]}" for i, kind in enumerate(result.start)], fontsize=8)
    axes.set_yticks([])
    axes.set_xlabel("layer (0-based), type in the start (l linear, w window, f full)")
    kind = result.layer_gain["attention_type"]
    axes.set_title(f"Gain of {kind} attention per layer (stage {result.stage}, {result.objective['name']})",
                   fontsize=10)
    if num_layers <= 32:
        finite = gains[np.isfinite(gains)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for index, gain in enumerate(gains):
            if np.isfinite(gain):
                color = "black" if gain > middle else "white"
                axes.text(index, 0, f"{gain:.2g}", ha="center", va="center", fontsize=6, color=color)
    figure.colorbar(image, ax=axes, pad=0.02, fraction=0.04, label="gain")
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


def plot_pareto(result: SearchResult, path: str | os.PathLike) -> Path:
    """Score against cost (estimated latency, or the number of non-linear layers) of every evaluated assignment, the
    Pareto front, and the chosen assignment. A layer count counts window and full layers alike, so each point of the
    front and the chosen one are labelled with their window and full layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cost = result.pareto_cost
    figure, axes = plt.subplots(figsize=(6.0, 4.2))
    axes.scatter([r[cost] for r in result.evaluations], [r["score"] for r in result.evaluations], s=14,
                 color="0.6", label="evaluated")
    axes.plot([r[cost] for r in result.pareto], [r["score"] for r in result.pareto], "o-", color="tab:blue",
              markersize=5, drawstyle="steps-post", label="Pareto front")
    chosen = next(r for r in result.evaluations if r["assignment"] == result.best)
    axes.scatter([chosen[cost]], [chosen["score"]], marker="*", s=180, color="tab:red", zorder=3, label="chosen")
    if result.teacher_score is not None:
        axes.axhline(result.teacher_score, color="tab:green", linestyle="--", linewidth=1, label="teacher")
    if result.latency_budget_ms is not None:
        axes.axvline(result.latency_budget_ms, color="tab:orange", linestyle=":", linewidth=1, label="budget")
    if cost == "estimated_latency_ms":
        axes.set_xlabel("estimated latency (ms)")
    else:
        axes.set_xlabel("non-linear layers: window + full, counted alike (labels: w window, f full)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        for record in result.pareto + ([] if chosen in result.pareto else [chosen]):
            window = record["num_nonlinear_layers"] - record["num_full_layers"]
            axes.annotate(f"{window}w {record['num_full_layers']}f", (record[cost], record["score"]),
                          textcoords="offset points", xytext=(5, -10), fontsize=7)
    direction = "higher" if result.objective["higher_is_better"] else "lower"
    axes.set_ylabel(f"{result.objective['name']} ({direction} is better)")
    axes.set_title(f"Attention search, stage {result.stage}: accuracy / cost", fontsize=10)
    return _finish_scatter(figure, axes, path, legend_size=8)


def plot_latency_front(result: dict, path: str | os.PathLike) -> Path:
    """A findings result's `latency` entry: every trained model's test score (95% interval bars) against its estimated
    latency, the front of models no other beats on both (labelled with their layouts), the searched model, and the
    teacher (all full) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = result["latency"]
    points = front["points"]
    figure, axes = plt.subplots(figsize=(7.0, 4.6))
    for point in points:
        low, high = point["ci95"] or (point["score"], point["score"])
        axes.errorbar([point["estimated_latency_ms"]], [point["score"]],
                      yerr=[[point["score"] - low], [high - point["score"]]], fmt="o", markersize=4, capsize=2,
                      color="tab:blue" if point["on_front"] else "0.6")
        if point["on_front"]:  # the rest in findings.md: labels of close points would overlap
            axes.annotate(point["layout"], (point["estimated_latency_ms"], point["score"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=6, family="monospace")
    on_front = [point for point in points if point["on_front"]]
    axes.plot([p["estimated_latency_ms"] for p in on_front], [p["score"] for p in on_front], "-", color="tab:blue",
              drawstyle="steps-post", label="front (no model beats it on both)")
    searched = next((p for p in points if p["model"] == "searched"), None)
    if searched is not None:
        axes.scatter([searched["estimated_latency_ms"]], [searched["score"]], marker="*", s=160, color="tab:red",
                     zorder=3, label="searched")
    teacher = front["teacher"]
    axes.axvline(teacher["estimated_latency_ms"], color="tab:green", linestyle=":", linewidth=1,
                 label="teacher's latency (all full)")
    if teacher["score"] is not None:
        axes.axhline(teacher["score"], color="tab:green", linestyle="--", linewidth=1, label="teacher's score")
    resolution = "x".join(map(str, front["resolution"] or []))
    axes.set_xlabel(f"estimated latency (ms, {front['device']}, {resolution})")
    direction = "higher" if front["higher_is_better"] else "lower"
    axes.set_ylabel(f"{front['measure']}, test split ({direction} is better)")
    axes.set_title("Trained models: test accuracy against estimated latency", fontsize=10)
    return _finish_scatter(figure, axes, path, legend_size=7)


def _finish_scatter(figure, axes, path: str | os.PathLike, legend_size: int) -> Path:
    """The accuracy / cost plots' grid and legend; saved (`_save_figure`) and closed."""
    import matplotlib.pyplot as plt

    axes.grid(alpha=0.3)
    axes.legend(fontsize=legend_size)
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)
