"""The main job's summary: `report.json`'s headline numbers from one run (`summarize`) and the text `jetvit pipeline`
prints at its end (`format_summary`), whose intervals `jetvit findings` writes the same way (`with_interval`)."""

from pathlib import Path


def summarize(attention_types: list[str], report: dict, speed: dict) -> dict:
    """Accuracy retention (student against the teacher, both against ground truth) and speed, from one run."""
    summary = {"attention_types": attention_types, "layer_indexing": "0-based"}
    truth = report.get("depth", {}).get("vs_ground_truth")
    if truth:
        student, teacher = truth["student"]["disparity"], truth["teacher"]["disparity"]
        summary["depth_vs_ground_truth"] = {
            "mode": "disparity (least-squares scale and shift, DA mode)",
            "student": {k: student[k] for k in ("abs_rel", "delta1")},
            "teacher": {k: teacher[k] for k in ("abs_rel", "delta1")},
            "delta1_retention": student["delta1"] / teacher["delta1"],
        }
    if "depth" in report:
        summary["depth_vs_teacher"] = {k: report["depth"]["vs_teacher"]["disparity"][k] for k in ("abs_rel", "delta1")}
    if "features" in report:
        summary["mean_feature_cosine"] = report["features"]["mean_cosine"]
    latency = {name: result["latency"]["median_ms"] for name, result in speed["results"].items()
               if result.get("status") in (None, "ok") and result.get("latency", {}).get("median_ms")}
    timing = speed.get("timing", {})
    summary["speed"] = {"device": speed.get("gpu") or speed.get("device"), "note": speed.get("note"),
                        "resolution": speed.get("resolution"), "latency_ms": latency, "ratios": speed.get("ratios"),
                        "timing": {"statistic": timing.get("statistic"), "warmup": timing.get("warmup"),
                                   "iters": timing.get("iters"),
                                   "threads": speed.get("environment", {}).get("cpu_threads")}}
    return summary


def format_summary(summary: dict, model_dir: Path) -> str:
    lines = ["", f"JetViT pipeline result: {model_dir}",
             "  attention types: " + ", ".join(f"{i}:{t}" for i, t in enumerate(summary["attention_types"]))]
    truth = summary.get("depth_vs_ground_truth")
    if truth:
        lines.append(f"  depth vs ground truth ({truth['mode']}): student AbsRel {truth['student']['abs_rel']:.4f} "
                     f"delta1 {truth['student']['delta1']:.4f}; teacher AbsRel {truth['teacher']['abs_rel']:.4f} "
                     f"delta1 {truth['teacher']['delta1']:.4f}; "
                     f"delta1 retention {100 * truth['delta1_retention']:.1f}%")
    if "depth_vs_teacher" in summary:
        lines.append(f"  depth vs the teacher's prediction: AbsRel {summary['depth_vs_teacher']['abs_rel']:.4f}, "
                     f"delta1 {summary['depth_vs_teacher']['delta1']:.4f}")
    if "mean_feature_cosine" in summary:
        lines.append(f"  mean per-layer feature cosine to the teacher: {summary['mean_feature_cosine']:.4f}")
    if "test_split" in summary:
        lines += _format_test_split(summary["test_split"])
    lines.append(_format_speed(summary["speed"]))
    if "real_photos" in summary:
        from ..evaluation.real_photos import format_real_photo_report

        lines += ["  " + line for line in format_real_photo_report(summary["real_photos"]).splitlines()]
    files = summary.get("files")
    if files:
        lines += ["  files:"] + [f"    {label}: {files[key]}" for key, label in (
            ("report", "report"), ("eval", "evaluation"), ("bench", "benchmark"), ("model_card", "model card"),
            ("settings", "settings"))]
        lines += [f"    baseline {name}: {path}" for name, path in files["baselines"].items()]
        lines += [f"    plot: {path}" for path in files["plots"]]
    return "\n".join(lines)


def with_interval(entry: dict | None) -> str:
    """A score (or a paired difference's mean) and, where it has one, its 95% interval in brackets; "-" for none."""
    if entry is None:
        return "-"
    value = entry["score"] if "score" in entry else entry["mean"]
    return f"{value:.4f}" + (f" [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]" if entry["ci95"] else "")


def _format_test_split(test: dict) -> list[str]:
    """`score_test_split` as a table: a row per model (the teacher first), a column per measure, each value with its
    95% interval; then the rows of the paired differences searched - teacher and searched - each baseline."""
    measures = list(test["measures"])
    rows = [("teacher", [test["teacher"].get(label) for label in measures])]
    rows += [(name, [entry["scores"][label] for label in measures]) for name, entry in test["models"].items()]
    searched = test["models"]["searched"]
    rows.append(("searched - teacher", [searched["minus_teacher"].get(label) for label in measures]))
    rows += [(f"searched - {name}", [entry["searched_minus_this"][label] for label in measures])
             for name, entry in test["models"].items() if "searched_minus_this" in entry]
    header = ["model"] + [f"{label} ({'higher' if test['measures'][label]['higher_is_better'] else 'lower'} is "
                          "better)" for label in measures]
    table = [header] + [[name] + [with_interval(entry) for entry in entries] for name, entries in rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    first, last = test["seed_range"][0], test["seed_range"][0] + test["num_scenes"] - 1
    lines = [f"  test split (scene seeds {first}..{last}, {test['num_scenes']} scenes the search never saw; in "
             f"brackets the {test['interval']}):"]
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    return lines


def _format_speed(speed: dict) -> str:
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in speed["latency_ms"].items())
    timing = speed.get("timing") or {}
    how = f"median of {timing['iters']} after {timing['warmup']} warm-up" if timing.get("iters") else ""
    if speed.get("note"):  # a CPU run: a smoke test
        threads = timing.get("threads")
        how += f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
        return f"  speed: {speed['note']} ({'x'.join(map(str, speed['resolution'] or []))}, batch 1, {how}): {timings}"
    return f"  speed ({speed['device']}, {'x'.join(map(str, speed['resolution'] or []))}, batch 1, {how}): {timings}"


__all__ = ["format_summary", "summarize", "with_interval"]
