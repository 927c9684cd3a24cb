"""The main job end to end on a tiny teacher: convert -> distill -> search -> distill -> search -> extract ->
fine-tune -> eval -> bench -> model card, on the CPU."""

import json

import pytest
import torch
from jetvit_hf import JetViTForDepthEstimation
from jetvit_hf.search.post_training import PipelineConfig, run_pipeline


def test_pipeline_end_to_end_and_rerun_skips_finished_stages(source_checkpoint, tmp_path, capsys):
    teacher, _ = source_checkpoint("depth_anything_v2")
    config = PipelineConfig(
        teacher=str(teacher), output_dir=str(tmp_path / "run"), train_data="scenes:8", eval_scenes=4,
        image_size=56, window_size=2, distill_steps=2, finetune_steps=2, batch_size=2, beam_width=2, max_full=1,
    )
    summary = run_pipeline(config)
    run = tmp_path / "run"
    for path in ("stage1/supernet", "search1/search_log.json", "search1/model", "stage2/supernet",
                 "search2/search_log.json", "search2/pareto.png", "finetune/model/README.md", "eval.json",
                 "bench.json", "report.json"):
        assert (run / path).exists(), path
    final = JetViTForDepthEstimation.from_pretrained(run / "finetune" / "model")
    assert final.config.attention_types == summary["attention_types"]
    stage1_choice = json.loads((run / "search1" / "attention_types.json").read_text())["attention_types"]
    # stage 2 may only have turned stage-1 layers into full attention, and at most max_full of them
    assert all(t in (s, "full") for t, s in zip(summary["attention_types"], stage1_choice))
    assert summary["attention_types"].count("full") <= 1
    truth = summary["depth_vs_ground_truth"]
    assert 0 < truth["teacher"]["delta1"] <= 1 and truth["delta1_retention"] == pytest.approx(
        truth["student"]["delta1"] / truth["teacher"]["delta1"])
    assert "CPU smoke test" in summary["speed"]["note"]
    with torch.no_grad():
        depth = final(torch.randn(1, 3, 56, 56)).predicted_depth
    assert depth.shape == (1, 56, 56) and torch.isfinite(depth).all()
    assert "JetViT pipeline result" in capsys.readouterr().out

    # a rerun finds every stage done and only re-evaluates
    before = (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns
    run_pipeline(config)
    assert (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_pipeline_needs_its_teacher(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError)):
        run_pipeline(PipelineConfig(teacher=str(tmp_path / "missing"), output_dir=str(tmp_path / "run")))
