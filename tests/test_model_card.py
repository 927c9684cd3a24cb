import json
from dataclasses import replace

import pytest

from jetvit_hf.cli import main
from jetvit_hf.convert import convert_to_jetvit, save_converted
from jetvit_hf.model_card import write_model_card


def test_model_card_states_layout_search_metrics_speed_and_usage(source_checkpoint, tmp_path):
    directory, _ = source_checkpoint("depth_anything_v2")
    types = ["linear", "window", "full", "linear", "window", "linear"]
    model, info = convert_to_jetvit(directory, types, output_loading_info=True)
    info.source = "depth-anything/Depth-Anything-V2-Small-hf"
    output = save_converted(model, tmp_path / "model", directory, info)
    search_log = {"stage": 2, "evaluations": [{}] * 7, "best_score": 0.9512, "beam_width": 3,
                  "objective": {"name": "depth"}, "stop_reason": "reached_teacher"}
    eval_report = {"num_images": 12, "features": {"mean_cosine": 0.987654},
                   "depth": {"vs_teacher": {"disparity": {"abs_rel": 0.0421, "delta1": 0.9876}}}}
    bench_report = {"gpu": "NVIDIA H200", "dtype": "bfloat16", "resolution": [518, 686],
                    "results": {"hf": {"latency": {"median_ms": 20.0}, "throughput": {"images_per_s": 55.5, "batch_size": 8}},
                                "jetvit": {"latency": {"median_ms": 9.87}, "throughput": {"images_per_s": 140.0, "batch_size": 8}}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench_report))
    card = write_model_card(output, repo_id="org/jetvit-tiny", search_logs=[search_log], eval_report=eval_report,
                            bench_report=tmp_path / "bench.json").read_text()
    assert "base_model: depth-anything/Depth-Anything-V2-Small-hf" in card
    assert "\n# jetvit-tiny\n" in card
    assert "pipeline_tag: depth-estimation" in card
    assert "| type | linear | window | full | linear | window | linear |" in card
    assert "3 of its 6 full-attention layers" in card and "1 kept as full attention" in card
    assert "| 2 (reached_teacher) | 7 | 0.9512 |" in card
    assert "| mean per-layer feature cosine | 0.9877 | 1 |" in card
    assert "| jetvit | 9.87 | 140.0 img/s (batch 8) |" in card
    assert 'AutoModelForDepthEstimation.from_pretrained("org/jetvit-tiny", trust_remote_code=True' in card
    assert "estimated latency" not in card  # a search without a layer table has no latency column
    priced = {**search_log, "best_latency_ms": 8.6659}
    card = write_model_card(output, search_logs=[{**priced, "stage": 1, "best_latency_ms": 8.1832}, priced]).read_text()
    assert "| stage | evaluated assignments | best score (depth) | estimated latency (ms) |" in card
    assert "| 1 (reached_teacher) | 7 | 0.9512 | 8.183 |" in card and "| 2 (reached_teacher) | 7 | 0.9512 | 8.666 |" in card


def test_model_card_refuses_a_non_jetvit_directory(source_checkpoint):
    directory, _ = source_checkpoint("dinov2")
    with pytest.raises(ValueError, match="not a JetViT checkpoint"):
        write_model_card(directory)


def test_card_command_titles_the_model_after_its_base_model(source_checkpoint, tmp_path, monkeypatch, capsys):
    """Without a repo id the title says what the model is, not its directory's name, and the base model comes from
    `jetvit_conversion.json`: a Hub id as the card's `base_model`, a local source by its directory's name."""
    directory, _ = source_checkpoint("depth_anything_v2")
    model, info = convert_to_jetvit(directory, ["linear", "window"] * 3, output_loading_info=True)
    hub = save_converted(model, tmp_path / "hub" / "model", directory, replace(info, source="org/depth-anything-tiny"))
    (tmp_path / "eval.json").write_text(json.dumps({"num_images": 3, "features": {"mean_cosine": 0.5}}))
    assert main(["card", "--model", str(hub), "--eval", str(tmp_path / "eval.json")]) == 0
    card = (hub / "README.md").read_text()
    assert f"wrote {hub / 'README.md'}" in capsys.readouterr().out
    assert "\n# JetViT (hybrid of org/depth-anything-tiny)\n" in card and "# model" not in card
    assert "base_model: org/depth-anything-tiny" in card
    assert ("hybrid-attention version of [`org/depth-anything-tiny`](https://huggingface.co/org/depth-anything-tiny) "
            "(transformers `DepthAnythingForDepthEstimation`):") in card
    assert "| mean per-layer feature cosine | 0.5000 | 1 |" in card

    monkeypatch.chdir(directory.parent.parent)  # a relative local path that looks like a Hub id is still local
    relative = f"{directory.parent.name}/{directory.name}"
    local = save_converted(model, tmp_path / "local" / "model", directory, replace(info, source=relative))
    assert main(["card", "--model", str(local)]) == 0
    card = (local / "README.md").read_text()
    assert f"\n# JetViT (hybrid of {directory.name})\n" in card and "base_model:" not in card
    assert (f"version of the local checkpoint `{directory.name}` (transformers `DepthAnythingForDepthEstimation`)"
            in card)
    assert main(["card", "--model", str(local), "--base-model", "org/named", "--repo-id", "me/jetvit-named"]) == 0
    card = (local / "README.md").read_text()
    assert "base_model: org/named" in card and "\n# jetvit-named\n" in card
    assert main(["card", "--model", str(tmp_path)]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err
