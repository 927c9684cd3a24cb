"""The sweep's figure: latency against tokens, log-log, and the hybrid's speed-up over each baseline, written
atomically (`io.atomic_save_figure`)."""

from __future__ import annotations

import os

from ..io import atomic_save_figure
from .device import CPU_SMOKE_NOTE
from .models import MODEL_NAMES

# model name -> (color, marker, line style)
_STYLES = {"hf": ("tab:gray", "s", "--"), "hf-eager": ("tab:olive", "v", ":"), "jetvit-full": ("tab:blue", "o", "-"),
           "jetvit": ("tab:red", "D", "-")}


def plot_sweep(result: dict, path: str | os.PathLike) -> str | None:
    """Log-log latency against tokens (left) and the hybrid's speed-up (right); returns the PNG path, or None (with a
    note in `result["notes"]`) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.setdefault("notes", []).append("plot skipped: matplotlib is not installed")
        return None
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(13, 5.2))
    _plot_latencies(ax, result)
    any_ratio = _plot_speedups(ax_ratio, result)
    for axis in (ax, ax_ratio):
        axis.set_xscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xlabel("tokens (prefix + patches)")
    ax.set_yscale("log")
    ax.set_ylabel(f"latency, batch {result.get('batch_size', 1)} (ms, median)")
    ax_ratio.set_ylabel("speed-up of the hybrid (time ratio)")
    ax_ratio.axhline(1.0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    if any_ratio:
        ax_ratio.legend(fontsize=8)
    xticks = [p["num_tokens"] for p in result["points"]]
    labels = [f"{p['num_tokens']}\n{p['resolution'][0]}x{p['resolution'][1]}" for p in result["points"]]
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    for axis in (ax, ax_ratio):
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(xticks)
        axis.set_xticklabels(labels, fontsize=7)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(NullLocator())
    where = result["gpu"] or f"CPU ({CPU_SMOKE_NOTE})"
    compiled = f", torch.compile {result['compile']['mode']}" if result.get("compile") else ""
    fig.suptitle(f"{result['model']['name']}: full vs hybrid ({result['attention_summary']}) - {where}, "
                 f"{result['dtype']}{compiled}", fontsize=10)
    fig.tight_layout()
    try:
        return str(atomic_save_figure(fig, path, dpi=120))
    finally:
        plt.close(fig)


def _plot_latencies(ax, result: dict) -> None:
    """One line per model: the median latency at each point's token count, each point labelled, "OOM" where it ran
    out of memory."""
    models = result.get("models", {})
    for name in MODEL_NAMES:
        xs, ys, oom_xs = [], [], []
        for p in result["points"]:
            r = p["results"].get(name)
            if r is None:
                continue
            if r.get("status") == "ok":
                xs.append(p["num_tokens"])
                ys.append(r["median_ms"])
            elif r.get("status") == "oom":
                oom_xs.append(p["num_tokens"])
        if not xs and not oom_xs:
            continue
        color, marker, line = _STYLES[name]
        label = f"{name}: {models.get(name, '')}".rstrip(": ")
        ax.plot(xs, ys, marker=marker, linestyle=line, color=color, label=label)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        for x in oom_xs:
            ax.annotate("OOM", (x, ys[-1] if ys else 1.0), color=color, fontsize=8, ha="center")


def _plot_speedups(ax, result: dict) -> bool:
    """The hybrid's speed-up over hf and jetvit-full at each point where both ran; whether any line was drawn."""
    any_ratio = False
    for name, color in (("hf", "tab:gray"), ("jetvit-full", "tab:blue")):
        pts = [(p["num_tokens"], p["ratios"].get(f"{name}/jetvit")) for p in result["points"]]
        pts = [(x, y) for x, y in pts if y]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=color, label=f"{name} / jetvit")
            any_ratio = True
    return any_ratio
