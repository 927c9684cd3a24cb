import json

import pytest

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
    assert "pipeline_tag: depth-estimation" in card
    assert "| type | linear | window | full | linear | window | linear |" in card
    assert "3 of its 6 full-attention layers" in card and "1 kept as full attention" in card
    assert "| 2 (reached_teacher) | 7 | 0.9512 |" in card
    assert "| mean per-layer feature cosine | 0.9877 | 1 |" in card
    assert "| jetvit | 9.87 | 140.0 img/s (batch 8) |" in card
    assert 'AutoModelForDepthEstimation.from_pretrained("org/jetvit-tiny", trust_remote_code=True' in card


def test_model_card_refuses_a_non_jetvit_directory(source_checkpoint):
    directory, _ = source_checkpoint("dinov2")
    with pytest.raises(ValueError, match="not a JetViT checkpoint"):
        write_model_card(directory)
