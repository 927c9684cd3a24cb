"""Text reports: the Markdown tables `jetvit bench` prints for a benchmark, a sweep and a layer table, and the list
of presets and layouts."""

from __future__ import annotations

from ..layouts import LAYOUTS, summarize_types
from .presets import PRESETS
from .timing import WHOLE_GRAPH_MODE


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cell(record: dict | None, key: str, spec: str = ".2f") -> str:
    if not record:
        return "-"
    if record.get("status") != "ok":
        return record.get("status", "-")
    return _fmt(record.get(key), spec)


def _where(result: dict) -> str:
    env = result["environment"]
    if not env["gpu"]:
        return f"CPU ({env['cpu_threads']} threads)"
    limits = [f"{value:.0f} {unit}" for value, unit in ((env.get("gpu_power_limit_w"), "W"),
                                                         (env.get("gpu_max_sm_clock_mhz"), "MHz")) if value]
    return env["gpu"] + (f" ({', '.join(limits)})" if limits else "")


def format_benchmark(result: dict) -> str:
    model = result["model"]
    b = result["batch_sizes"]["throughput"]
    res = result["resolution"]
    compiled = _compile_label(result.get("compile"))
    lines = []
    if result.get("note"):
        lines.append(f"*** {result['note'].upper()} ***")
    lines += [
        f"jetvit bench: {model['name']} at {res[0]}x{res[1]} ({result['num_tokens']} tokens), {result['dtype']}"
        f"{compiled}, on {_where(result)}",
        f"hybrid: {result['attention_summary']} ({result['attention_layout']}); window {model['window_size']} patches; "
        f"SDPA: {_sdpa_text(result['sdpa_backend'])}; MLP GELU: {result.get('mlp_gelu', 'n/a')}; "
        f"torch {result['versions']['torch']}, transformers "
        f"{result['versions']['transformers']}",
        "",
        f"| model | latency bs1 (ms) | bs{b} (ms/batch) | bs{b} (img/s) | peak mem bs1 (MiB) | peak mem bs{b} (MiB) "
        f"| backbone TFLOP/s bs1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["results"].items():
        if entry.get("status") == "skipped":
            lines.append(f"| {name} | skipped | | | | | |")
            continue
        lat, thr = entry.get("latency"), entry.get("throughput")
        lines.append(
            f"| {name} | {_cell(lat, 'median_ms')} | {_cell(thr, 'median_ms')} | {_cell(thr, 'images_per_s', '.1f')} "
            f"| {_cell(lat, 'peak_memory_mib', '.0f')} | {_cell(thr, 'peak_memory_mib', '.0f')} "
            f"| {_fmt(entry.get('backbone_tflops_per_s'), '.1f')} |"
        )
    for key, ratio in result["ratios"].items():
        lines.append(f"| {key} (time ratio) | {_fmt(ratio['latency'], '.2f', 'x')} | "
                     f"{_fmt(ratio['throughput'], '.2f', 'x')} | | | | |")
    for name, entry in result["results"].items():
        lines.append(f"  {name}: {entry['description']}{_gpu_state_text(entry)}")
    for name, entry in result["results"].items():
        lines += _memory_advice(name, entry, res)
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _gpu_state_text(entry: dict) -> str:
    """"; SM clock 1740 MHz at 689 W (bs1), ..." for the timings that recorded the GPU's state, else ""."""
    parts = []
    for record in (entry.get("latency"), entry.get("throughput")):
        state = (record or {}).get("gpu_state")
        if state:
            power = f" at {state['power_w_median']:.0f} W" if state.get("power_w_median") is not None else ""
            parts.append(f"{state['sm_clock_mhz_median']:.0f} MHz{power} (bs{record.get('batch_size', '?')})")
    return "; SM clock " + ", ".join(parts) if parts else ""


def _memory_advice(name: str, entry: dict, resolution) -> list[str]:
    """What to run instead when a model ran out of memory: the largest throughput batch that fits, or a smaller
    resolution when batch 1 does not."""
    latency, throughput = entry.get("latency") or {}, entry.get("throughput") or {}
    if latency.get("status") == "oom":
        return [f"  {name}: out of memory at batch 1 and {resolution[0]}x{resolution[1]} on this device; try a smaller "
                "--resolution"]
    if throughput.get("status") != "oom":
        return []
    fits = throughput.get("fits_batch_size")
    return [f"  {name}: out of memory at batch {throughput['batch_size']} on this device; batch {fits} fits: rerun "
            f"with --batch-size {fits}"]


def _sdpa_text(summary) -> str:
    if isinstance(summary, dict):
        return ", ".join(f"{k}={v}" for k, v in summary.items())
    return str(summary)


def format_sweep(result: dict) -> str:
    lines = []
    if result.get("note"):
        lines.append(f"*** {result['note'].upper()} ***")
    compiled = _compile_label(result.get("compile"))
    lines += [
        f"jetvit bench sweep: {result['model']['name']}, batch {result['batch_size']}, {result['dtype']}{compiled}, "
        f"on {_where(result)}; hybrid {result['attention_summary']}",
        "",
    ]
    names = list(result["models"])  # the run's models, baselines first
    ratios = [f"{name}/jetvit" for name in names if name != "jetvit"]
    lines += [
        "| resolution | tokens | " + " | ".join([f"{name} (ms)" for name in names] + ratios) + " |",
        "|---|---:|" + "---:|" * (len(names) + len(ratios)),
    ]
    for p in result["points"]:
        r, q = p["results"], p["ratios"]
        cells = [_cell(r.get(name), "median_ms") for name in names] + [_fmt(q.get(k), ".2f", "x") for k in ratios]
        lines.append(f"| {p['resolution'][0]}x{p['resolution'][1]} | {p['num_tokens']} | " + " | ".join(cells) + " |")
    if result.get("plot"):
        lines.append(f"  plot: {result['plot']}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def format_layer_table(table: dict) -> str:
    lines = []
    if table.get("note"):
        lines.append(f"*** {table['note'].upper()} ***")
    res = table["resolution"]
    lines += [
        f"jetvit bench layer table: {table['model']} at {res[0]}x{res[1]} ({table['num_tokens']} tokens), batch "
        f"{table['batch_size']}, {table['dtype']}, on {table['gpu'] or 'CPU'}",
        "",
        "| part | ms |",
        "|---|---:|",
    ]
    for kind, ms in table["per_layer_ms"].items():
        lines.append(f"| one {kind} layer | {ms:.3f} |")
    lines.append(f"| remainder (embeddings, norm, head) | {table['remainder_ms']:.3f} |")
    lines.append(f"| whole all-full model ({table['num_layers']} layers) | {table['whole_model_full_ms']:.3f} |")
    check = table.get("check")
    if check:
        lines.append(f"| check: {summarize_types(check['attention_types'])} estimated | {check['estimated_ms']:.3f} |")
        lines.append(f"| check: measured ({check['relative_error']:+.1%} error) | {check['measured_ms']:.3f} |")
    for note in table.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def list_presets() -> str:
    lines = ["| preset | source | description | aliases |", "|---|---|---|---|"]
    for p in PRESETS.values():
        lines.append(f"| {p.name} | {p.architecture} | {p.description} | {', '.join(p.aliases)} |")
    lines.append("")
    lines.append("layouts: " + ", ".join(LAYOUTS) + " (or jetvit convert's syntax, e.g. 'linear,window*10,full,...')")
    return "\n".join(lines)


def _compile_label(record: dict | None) -> str:
    if not record:
        return ", eager"
    if record["mode"] == WHOLE_GRAPH_MODE:
        return ", torch.compile + one CUDA graph per shape"
    return f", torch.compile({record['mode']})"
