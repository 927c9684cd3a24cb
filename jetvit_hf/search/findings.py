"""The paper's ablations at proxy scale, on a finished `jetvit pipeline` run (`jetvit findings --run DIR`).

Each row is a fixed-layout student trained exactly as the run's baselines are (the teacher converted to the row's
layout and options, distilled for 2 x `distill_steps`, fine-tuned for `finetune_steps`, the run's settings), then
scored with the run's searched model and baselines on the same test split (`post_training.score_test_split`): every
score with its 95% bootstrap interval, with the paired differences row - teacher, searched - row, and row - the model
the row is compared with (its `compare`: the squeeze dynamic all-linear baseline for the convolutions and the stage-1
layout, stage 2's round 0 for the later rounds, full inheritance for MLP-only inheritance).

- `conv` (Table 1): all-linear with no convolution of V and with a static depthwise one; the run's `all_linear`
  baseline is the squeeze dynamic one.
- `stage1` (Table 2): the stage-1 search's linear + window layout beside the run's all-linear and all-window.
- `full_layers` (Table 3 / Fig. 4): stage 2's best layout after each round (0, 1, ... full layers), each retrained as
  a fixed layout, so that the number of full layers is the only difference between rows.
- `inheritance` (Fig. 5): the searched layout converted with MLP-only inheritance (fresh attention weights) and with
  every weight inherited.
- `skip_stage1` (Table 3's ablation): the searched layout's full layers kept and every other layer linear (linear +
  full only) or window (window + full only), against the searched layout trained the same way. The full layers stay
  where the search put them rather than being searched again without stage 1.
- `random` (beyond the paper): `RANDOM_LAYOUTS` random orders of the searched layout's attention types, seeded by the
  run's seed. With the same number of layers of each type they have the same estimated latency (`jetvit bench
  --layer-table` prices a layout by its type counts), so they ask whether the search placed its layers well.

- `pareto` (beyond the paper): no rows of its own. With a per-layer latency table (`--latency-table`, or the one the
  run's searches used), every scored model is priced at its estimated latency and the test split's score of the
  search objective's measure is plotted against it, with the front of models no other beats on both
  (`findings/pareto.png`, the `latency` entry of findings.json). `--tables pareto` alone prices the rows already
  scored without training or scoring anything.

Rows go under `DIR/findings/<row>/`, resumable and skipped when done like the pipeline's stages; a row trained exactly
as a baseline or an earlier row (same layout and options) is that model, not trained again (training is seeded;
on a GPU not bit-exact, so a second training would differ only by that noise). The scores go to `DIR/findings/findings.json` and, as Markdown tables, to `DIR/findings/findings.md`;
the tables of earlier calls stay there beside the new ones.
"""

import json
import random
from pathlib import Path

from ..io import atomic_file, atomic_write_json, read_json
from ..layouts import check_attention_types
from .post_training import (CONFIG_FILE, PROTOCOL, PipelineConfig, extract_model, finetune_depth_weight,
                            restart_clock, score_test_split, train_stage, training_settings, validate_config)
from .summary import with_interval

TABLES = ("conv", "stage1", "full_layers", "inheritance", "skip_stage1", "random")  # the tables with rows
FINDINGS_DIR = "findings"
RANDOM_LAYOUTS = 3


def _code(layout: list[str]) -> str:
    return "".join(kind[0].upper() for kind in layout)


def findings_rows(run: Path, tables=TABLES) -> dict[str, dict]:
    """`{row: {"table", "attention_types", "convert": convert_to_jetvit options}}` for `tables`, from the run's
    searched model and search logs."""
    _check_tables(tables)
    if not set(tables) - {"pareto"}:
        return {}
    searched = read_json(run / "finetune" / "model" / "config.json")["attention_types"]
    num_layers = len(searched)
    rows = {}
    if "conv" in tables:
        for conv in ("none", "static"):
            rows[f"all_linear_conv_{conv}"] = {"table": "conv", "attention_types": ["linear"] * num_layers,
                                               "convert": {"linear_attention_conv": conv}, "compare": "all_linear"}
    if "stage1" in tables:
        stage1 = read_json(run / "search1" / "search_log.json")["best"]
        rows[f"stage1_{_code(stage1)}"] = {"table": "stage1", "attention_types": stage1, "convert": {},
                                           "compare": "all_linear"}
    if "full_layers" in tables:
        first = None  # every round against the stage-1 layout it started from
        for round_log in read_json(run / "search2" / "search_log.json")["rounds"]:
            layout = round_log["beam"][0]["assignment"]
            name = f"full{layout.count('full')}_{_code(layout)}"
            rows[name] = {"table": "full_layers", "attention_types": layout, "convert": {},
                          "compare": first or "all_linear"}
            first = first or name
    if "inheritance" in tables:
        for inherit in ("all", "mlp_only"):
            rows[f"searched_inherit_{inherit}"] = {"table": "inheritance", "attention_types": searched,
                                                   "convert": {"inherit": inherit},
                                                   "compare": "all_linear" if inherit == "all" else
                                                   "searched_inherit_all"}
    fixed = f"searched_{_code(searched)}"  # the searched layout trained as a fixed layout, as every row is
    if "skip_stage1" in tables or "random" in tables:  # listed under the first; the other shows it as compared with
        rows[fixed] = {"table": "skip_stage1" if "skip_stage1" in tables else "random", "attention_types": searched,
                       "convert": {}, "compare": "all_linear"}
    if "skip_stage1" in tables:
        for kind in ("linear", "window"):
            layout = [layer if layer == "full" else kind for layer in searched]
            rows[f"{kind}_full_{_code(layout)}"] = {"table": "skip_stage1", "attention_types": layout, "convert": {},
                                                    "compare": fixed}
    if "random" in tables:
        for layout in _random_orders(searched, RANDOM_LAYOUTS, read_json(run / CONFIG_FILE)["seed"]):
            rows[f"random_{_code(layout)}"] = {"table": "random", "attention_types": layout, "convert": {},
                                               "compare": fixed}
    for row in rows.values():
        check_attention_types(row["attention_types"], "a findings row")
    return rows


def _check_tables(tables) -> None:
    unknown = sorted(set(tables) - {*TABLES, "pareto"})
    if unknown or not tables:
        raise ValueError(f"--tables: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; choose from "
                         f"{', '.join(TABLES)}, pareto")


def _random_orders(layout: list[str], count: int, seed: int) -> list[list[str]]:
    """Up to `count` distinct orders of `layout`'s attention types other than `layout` itself, drawn with `seed`."""
    generator, orders = random.Random(seed), []
    for _ in range(1000):  # a layout with few distinct orders has fewer than `count`
        order = generator.sample(layout, len(layout))
        if order != layout and order not in orders:
            orders.append(order)
            if len(orders) == count:
                break
    return orders


def _row_key(row: dict) -> tuple:
    convert = {"linear_attention_conv": "squeeze_dynamic", "inherit": "all", **row["convert"]}
    return tuple(row["attention_types"]), tuple(sorted(convert.items()))


def _train_row(config: PipelineConfig, info, name: str, row: dict, directory: Path, index: int, total: int) -> Path:
    """Convert, distil and fine-tune one row into `directory` (each step skipped when done); returns its model."""
    import torch

    from ..convert import convert_to_jetvit, save_converted

    converted = directory / "converted"
    if not (converted / "config.json").is_file():
        with torch.random.fork_rng(devices=[]):  # new parameters' initial values follow --seed, as the baselines'
            torch.manual_seed(config.seed)
            model, conversion = convert_to_jetvit(config.teacher, row["attention_types"],
                                                  window_size=config.window_size, output_loading_info=True,
                                                  **row["convert"])
        save_converted(model, converted, config.teacher, conversion, overwrite=True)
    training = training_settings(config)
    steps = 2 * config.distill_steps
    distilled = train_stage(index, f"{name}: distilling ({steps} steps, as the baselines)", directory / "distill",
                            "supernet", steps, total=total, mode="distill", student=str(converted),
                            candidates=[[kind] for kind in row["attention_types"]], **training)
    return train_stage(index, f"{name}: fine-tuning", directory / "finetune", "model", config.finetune_steps,
                       total=total, mode="finetune", student=str(extract_model(distilled)),
                       depth_loss_weight=finetune_depth_weight(info), **training)


def run_findings(run: str | Path, tables=TABLES, latency_table=None) -> dict:
    """Train every row of `tables` for the pipeline run in `run` and score them, with the rows of earlier calls, and
    the run's models on its test split. With a latency table (`latency_table`, else the run's `--latency-table`)
    the scored models also get the accuracy / latency front (`latency_front`); `tables=["pareto"]` only that, on
    the rows already scored."""
    restart_clock()
    _check_tables(tables)
    run = Path(run)
    if not (run / "report.json").is_file():
        raise ValueError(f"--run {run}: not a finished jetvit pipeline run (no report.json)")
    recorded = read_json(run / CONFIG_FILE)
    if recorded.pop("protocol", None) != PROTOCOL:
        raise ValueError(f"--run {run}: made by an earlier version of the pipeline; rerun it first")
    latency_table = latency_table or recorded.get("latency_table")
    if "pareto" in tables and latency_table is None:
        raise ValueError("--tables pareto needs --latency-table (write one with `jetvit bench --model <converted "
                         "teacher> --layer-table OUT.json`)")
    output = run / FINDINGS_DIR
    if set(tables) - {"pareto"}:
        result = _train_and_score(run, PipelineConfig(**recorded), tables)
    elif (output / "findings.json").is_file():
        result = read_json(output / "findings.json")
    else:
        raise ValueError(f"--run {run}: no rows scored yet ({output / 'findings.json'}); run tables with rows first")
    if latency_table is not None:
        from .plots import plot_latency_front

        result["latency"] = latency_front(result, read_json(run / "report.json")["attention_types"], latency_table)
        plot_latency_front(result, output / "pareto.png")
    atomic_write_json(output / "findings.json", result)
    with atomic_file(output / "findings.md") as staging:
        Path(staging).write_text(format_findings(result))
    return result


def _train_and_score(run: Path, config: PipelineConfig, tables) -> dict:
    from ..convert import load_jetvit
    from ..data.render_stream import render_dataset
    from ..device import resolve_placement

    config, info = validate_config(config)
    output = run / FINDINGS_DIR
    rows = findings_rows(run, tables)
    if (output / "findings.json").is_file():  # an earlier call's rows stay (trained, so skipped) and are scored again
        earlier = read_json(output / "findings.json")["rows"]
        rows = {**{name: row for name, row in earlier.items() if name not in rows}, **rows}
    models = {"searched": run / "finetune" / "model",
              **{f"all_{kind}": run / "baselines" / kind / "finetune" / "model" for kind in ("linear", "window")}}
    num_layers = len(next(iter(rows.values()))["attention_types"]) if rows else 0
    # a row that is trained exactly as a baseline or an earlier row is that model (training is seeded)
    trained = {_row_key({"attention_types": [kind] * num_layers, "convert": {}}): models[f"all_{kind}"]
               for kind in ("linear", "window")}
    for index, (name, row) in enumerate(rows.items(), start=1):
        key = _row_key(row)
        if key not in trained:
            trained[key] = _train_row(config, info, name, row, output / name, index, len(rows))
        models[name] = trained[key]
    teacher = load_jetvit(config.teacher)
    device = resolve_placement(config.device, config.dtype).device
    test_set = render_dataset("test", config.eval_scenes, config.image_size, config.image_size, device=device)
    scores = score_test_split(config, teacher, info, models, test_set,
                              compare={name: row["compare"] for name, row in rows.items()})
    return {"run": str(run), "rows": rows, "test_split": scores,
            "budget": {"distill_steps": 2 * config.distill_steps, "finetune_steps": config.finetune_steps,
                       "image_size": config.image_size, "batch_size": config.batch_size}}


def latency_front(result: dict, searched: list[str], latency_table) -> dict:
    """Every trained model of a findings `result` at its estimated latency (`bench.estimate_latency`) with its test
    score in the search objective's measure (the first), and the front of those no other beats on both. `searched`
    is the run's searched layout; the teacher is priced as all-full. Untrained conversions are left out, and rows
    that are the same trained model (a row trained as a baseline or an earlier row) are one point."""
    from ..bench import estimate_latency
    from .beam import pareto_front

    table = latency_table if isinstance(latency_table, dict) else read_json(latency_table)
    test = result["test_split"]
    measure = next(iter(test["measures"]))
    higher = test["measures"][measure]["higher_is_better"]
    layouts = {"searched": searched, "all_linear": ["linear"] * len(searched),
               "all_window": ["window"] * len(searched),
               **{name: row["attention_types"] for name, row in result["rows"].items()}}
    by_directory = {}  # one point per trained model: rows that reuse a model are listed under it
    for name, entry in test["models"].items():
        if name not in layouts:
            continue
        if entry["model"] in by_directory:
            by_directory[entry["model"]]["same_model"].append(name)
            continue
        by_directory[entry["model"]] = {
            "model": name, "same_model": [], "layout": _code(layouts[name]),
            "estimated_latency_ms": estimate_latency(table, layouts[name]),
            "score": entry["scores"][measure]["score"], "ci95": entry["scores"][measure]["ci95"]}
    points = list(by_directory.values())
    front = {point["model"] for point in pareto_front(points, "estimated_latency_ms", higher)}
    for point in points:
        point["on_front"] = point["model"] in front
    teacher = test["teacher"].get(measure)
    return {"measure": measure, "higher_is_better": higher,
            "table": str(latency_table) if not isinstance(latency_table, dict) else table.get("command"),
            "device": table.get("gpu") or table.get("device"), "resolution": table.get("resolution"),
            "teacher": {"estimated_latency_ms": estimate_latency(table, ["full"] * len(searched)),
                        "score": teacher["score"] if teacher else None, "ci95": teacher["ci95"] if teacher else None},
            "points": sorted(points, key=lambda point: point["estimated_latency_ms"])}


def format_findings(result: dict) -> str:
    """One Markdown table per table of rows, with the teacher, searched model and baselines for reference; each row's
    paired difference to the model it is compared with (`compare`) is in the last columns."""
    test = result["test_split"]
    measures, truth = list(test["measures"]), list(test["teacher"])
    header = ("| model | layout | " + " | ".join(measures) + " | " + " | ".join(f"{m}: minus teacher" for m in truth)
              + " | compared with | " + " | ".join(f"{m}: minus compared" for m in measures) + " |")
    lines = [f"Budget per trained row: {json.dumps(result['budget'])}; {test['num_scenes']} test scenes; "
             f"{test['interval']}.", ""]
    reference_rows = {"searched": "the pipeline's searched model", "all_linear": "squeeze dynamic conv",
                      "all_window": ""}
    for table in dict.fromkeys(row["table"] for row in result["rows"].values()):
        lines += [f"### {table}", "", header, "|" + "---|" * (3 + 2 * len(measures) + len(truth))]
        lines.append("| teacher | full | " + " | ".join(with_interval(test["teacher"].get(m)) for m in measures) + " |"
                     + " - |" * (len(truth) + 1 + len(measures)))
        own = [name for name, row in result["rows"].items() if row["table"] == table]
        compared_rows = [row["compare"] for name, row in result["rows"].items() if name in own]
        names = list(dict.fromkeys([*reference_rows, *(name for name in compared_rows if name in result["rows"]),
                                    *own]))
        for name in names:
            entry = test["models"][name]
            layout = (_code(result["rows"][name]["attention_types"]) if name in result["rows"]
                      else reference_rows[name])
            compared = entry.get("minus_compared", {})
            lines.append(f"| {name} | {layout} | " + " | ".join(with_interval(entry["scores"].get(m)) for m in measures)
                         + " | " + " | ".join(with_interval(entry["minus_teacher"].get(m)) for m in truth)
                         + f" | {compared.get('model', '-')} | "
                         + " | ".join(with_interval(compared.get(m)) for m in measures) + " |")
        lines.append("")
    if "latency" in result:
        lines += _format_latency_front(result["latency"])
    return "\n".join(lines)


def _format_latency_front(front: dict) -> list[str]:
    direction = "higher" if front["higher_is_better"] else "lower"
    lines = ["### pareto", "", f"Estimated latency from the layer table {front['table']} ({front['device']}, "
             f"{'x'.join(map(str, front['resolution'] or []))}); the teacher, all full, "
             f"{front['teacher']['estimated_latency_ms']:.3f} ms. {front['measure']}: {direction} is better.", "",
             f"| model | layout | estimated ms | {front['measure']} | on the front |", "|---|---|---|---|---|"]
    for point in front["points"]:
        score = with_interval({"score": point["score"], "ci95": point["ci95"]})
        names = " = ".join([point["model"], *point["same_model"]])
        lines.append(f"| {names} | {point['layout']} | {point['estimated_latency_ms']:.3f} | {score} | "
                     f"{'yes' if point['on_front'] else ''} |")
    return [*lines, ""]


__all__ = ["TABLES", "findings_rows", "format_findings", "latency_front", "run_findings"]
