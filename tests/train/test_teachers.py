"""The proxy teachers: the committed checkpoints (transformers alone loads them) and `training/train_teacher.py` /
`training/evaluate_teacher.py` on tiny settings (export, archive, calibration, resume, scores)."""

import json
import math
import sys
import tarfile

import pytest
import torch
from safetensors.torch import load_file
from transformers import DepthAnythingForDepthEstimation, DINOv3ViTModel

from jetvit_hf.convert import load_jetvit
from jetvit_hf.data.render_layouts import CLASS_NAMES
from jetvit_hf.data.render_stream import RenderedBatches
from jetvit_hf.evaluation.metrics import SegmentationMetrics
from jetvit_hf.evaluation.probe import probe_features
from helpers import BLOCK_PACKAGE, REPO, relative_error, run_python

sys.path.insert(0, str(REPO / "training"))
import evaluate_teacher  # noqa: E402
import train_teacher  # noqa: E402

TEACHERS = REPO / "training" / "teachers"
TINY = ["--batch-size", "2", "--hidden-size", "64", "--num-layers", "4", "--num-heads", "1", "--warmup-steps", "2"]
SIZES = {"depth": "56", "segmentation": "64"}


def train(task, output, *extra):
    argv = [task, "--output", str(output), "--image-size", SIZES[task], *TINY, *extra]
    assert train_teacher.main(argv) == 0


def test_the_committed_teachers_load_with_transformers_alone_and_have_1024_tokens():
    out = run_python(BLOCK_PACKAGE + f"""
import torch
from safetensors.torch import load_file
from transformers import DepthAnythingForDepthEstimation, DINOv3ViTModel
depth = DepthAnythingForDepthEstimation.from_pretrained({str(TEACHERS / "depth-dinov2-tiny")!r})
backbone = depth.config.backbone_config
assert (backbone.num_hidden_layers, backbone.image_size, backbone.patch_size) == (12, 448, 14)
with torch.no_grad():
    disparity = depth(torch.zeros(1, 3, 448, 448, dtype=depth.dtype)).predicted_depth
assert disparity.shape == (1, 448, 448) and torch.isfinite(disparity).all()
seg = DINOv3ViTModel.from_pretrained({str(TEACHERS / "seg-dinov3-tiny")!r})
assert (seg.config.num_hidden_layers, seg.config.image_size, seg.config.patch_size) == (12, 512, 16)
probe = torch.nn.Sequential(torch.nn.BatchNorm2d(192), torch.nn.Conv2d(192, 10, 1))
state = load_file({str(TEACHERS / "seg-dinov3-tiny" / "probe.safetensors")!r})
probe.load_state_dict({{k.replace("batchnorm.", "0.").replace("classifier.", "1."): v
                       for k, v in state.items()}})
with torch.no_grad():
    tokens = seg(torch.zeros(1, 3, 512, 512, dtype=seg.dtype)).last_hidden_state
assert tokens.shape == (1, 1 + 4 + 1024, 192)
print(depth.dtype, seg.dtype)
""")
    assert out.split() == ["torch.bfloat16", "torch.bfloat16"]
    for name in ("depth-dinov2-tiny", "seg-dinov3-tiny"):
        assert (TEACHERS / name / "model.safetensors").stat().st_size <= 12 * 2**20, name


def test_the_segmentation_teachers_probe_reads_what_the_converted_jetvit_gives_probe_features():
    teacher = train_teacher.load_teacher("segmentation", TEACHERS / "seg-dinov3-tiny").eval()
    pixels = RenderedBatches("test", 2, 64, 64).batch(0)["pixel_values"]
    with torch.no_grad():
        expected = teacher.feature_map(pixels)
        actual = probe_features(load_jetvit(TEACHERS / "seg-dinov3-tiny"), pixels)
    assert actual.shape == expected.shape == (2, 192, 4, 4)
    assert relative_error(actual, expected) < 1e-5


def test_a_depth_run_exports_a_calibrated_bf16_teacher_and_its_archive(tmp_path):
    output, archive = tmp_path / "depth", tmp_path / "out" / "depth.tar"
    train("depth", output, "--steps", "4", "--archive", str(archive))
    report = json.loads((output / train_teacher.REPORT_FILE).read_text())
    assert (report["step"], report["total_steps"], report["finished"]) == (4, 4, True)
    model = DepthAnythingForDepthEstimation.from_pretrained(output)
    assert model.dtype == torch.bfloat16 and model.config.backbone_config.num_hidden_layers == 4
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(["depth", *(f"depth/{p.name}" for p in output.iterdir())])
    assert set(report["calibration"]) >= {"scale", "shift"}


def test_calibration_folds_the_least_squares_scale_and_shift_into_the_last_convolution():
    torch.manual_seed(0)
    model = train_teacher.build_teacher("depth", 56, 64, 4, 1).eval()
    with torch.no_grad():
        model.head.conv3.bias.fill_(10.0)  # every output positive, so the final ReLU is the identity throughout
    batches = [{"pixel_values": torch.randn(2, 3, 56, 56)} for _ in range(2)]
    with torch.no_grad():
        before = [model(b["pixel_values"]).predicted_depth for b in batches]
    for batch, prediction in zip(batches, before):  # true disparity = 2 x prediction + 0.5, as depth
        batch["depth"] = 1 / (2 * prediction + 0.5)
    scale, shift = train_teacher.calibrate_output_scale(model, batches)
    assert (scale, shift) == (pytest.approx(2.0, rel=1e-4), pytest.approx(0.5, rel=1e-3))
    with torch.no_grad():
        after = [model(b["pixel_values"]).predicted_depth for b in batches]
    for prediction, reference in zip(after, before):
        assert relative_error(prediction, 2 * reference + 0.5) < 1e-5


def test_a_segmentation_run_exports_the_backbone_and_dinov3s_probe(tmp_path):
    train("segmentation", tmp_path / "seg", "--steps", "3")
    assert DINOv3ViTModel.from_pretrained(tmp_path / "seg").dtype == torch.bfloat16
    probe = load_file(tmp_path / "seg" / "probe.safetensors")
    assert probe["classifier.weight"].shape == (len(CLASS_NAMES), 64, 1, 1)
    assert "batchnorm.running_var" in probe


def test_a_cut_off_run_resumes_from_its_last_export_and_keeps_its_schedule(tmp_path, monkeypatch):
    output = tmp_path / "depth"
    calls = {"count": 0}
    real_loss = train_teacher.teacher_loss

    def loss_until_cut(*args):
        calls["count"] += 1
        if calls["count"] == 4:  # the device command is cut off during step 4
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(train_teacher, "teacher_loss", loss_until_cut)
    with pytest.raises(KeyboardInterrupt):
        train("depth", output, "--steps", "6", "--save-minutes", "1e-9")
    assert json.loads((output / train_teacher.REPORT_FILE).read_text())["step"] == 3
    monkeypatch.setattr(train_teacher, "teacher_loss", real_loss)
    with pytest.raises(SystemExit, match="other settings"):
        train("depth", output, "--resume", "--lr", "1e-3")
    train("depth", output, "--resume")
    report = json.loads((output / train_teacher.REPORT_FILE).read_text())
    assert (report["step"], report["total_steps"], report["resumed_at"], report["finished"]) == (6, 6, [3], True)
    with pytest.raises(SystemExit, match="finished teacher"):
        train("depth", output, "--resume")
    with pytest.raises(SystemExit, match="holds no training_report.json"):
        train("depth", tmp_path / "nothing", "--resume")


def test_the_schedule_warms_up_decays_and_warms_up_again_after_a_resume():
    assert train_teacher.lr_factor(0, 100, 10, None) == pytest.approx(0.1)
    assert train_teacher.lr_factor(50, 100, 10, None) == pytest.approx(0.5)
    resumed = 0.5 * (1 + math.cos(math.pi * 0.6)) * 11 / train_teacher.RESUME_WARMUP_STEPS
    assert train_teacher.lr_factor(60, 100, 10, 50) == pytest.approx(resumed)
    assert train_teacher.plan_steps(0.5, minutes=1.0, elapsed=10, reserve=5) == 90
    assert train_teacher.plan_steps(0.5, minutes=0.1, elapsed=10, reserve=5) == 1


@pytest.mark.parametrize("argv, message", [
    (["depth", "--output", "x", "--image-size", "64"], "multiple of the depth teacher's patch 14"),
    (["segmentation", "--output", "x", "--hidden-size", "100", "--num-heads", "3"], "divisible by --num-heads"),
    (["depth", "--output", "x", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["depth", "--output", "x", "--num-layers", "3"], "at least 4 for the depth teacher"),
])
def test_impossible_settings_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        train_teacher.parse_args(argv)
    assert message in capsys.readouterr().err


def test_depth_scores_match_a_float64_long_hand_alignment():
    generator = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 8, 8, generator=generator, dtype=torch.float64) * 20 + 0.5
    depth[0, :2] = 0  # sky
    depth[1, 0] = 120  # beyond the 80 m evaluation range
    prediction = 1 / depth.clamp_min(0.5) * 3 + 0.2 + 0.05 * torch.rand(2, 8, 8, generator=generator)
    scores = evaluate_teacher.depth_scores(prediction, depth)
    for image in range(2):
        valid = (depth[image] > 0) & (depth[image] <= 80)
        truth, guess = 1 / depth[image][valid], prediction[image][valid]
        design = torch.stack((guess, torch.ones_like(guess)), 1)
        scale, shift = torch.linalg.lstsq(design, truth[:, None]).solution.flatten()
        aligned = scale * guess + shift
        assert scores["abs_rel"][image] == pytest.approx(((aligned - truth).abs() / truth).mean().item(), rel=1e-6)
        ratio = torch.maximum(aligned / truth, truth / aligned)
        assert scores["delta1"][image] == pytest.approx((ratio < 1.25).double().mean().item())
        assert scores["abs_rel_raw"][image] == pytest.approx(((guess - truth).abs() / truth).mean().item())


def test_a_teacher_is_scored_on_the_test_split_with_intervals(tmp_path):
    train("segmentation", tmp_path / "seg", "--steps", "2")
    result = evaluate_teacher.evaluate_teacher("segmentation", tmp_path / "seg", num_scenes=3, batch_size=2,
                                               device="cpu")
    assert (result["split"], result["num_scenes"], result["image_size"]) == ("test", 3, 64)
    miou = result["metrics"]["miou"]
    assert miou["ci95"][0] <= miou["value"] <= miou["ci95"][1]
    # the same number as SegmentationMetrics on the same three test scenes, computed apart
    teacher = train_teacher.load_teacher("segmentation", tmp_path / "seg").eval()
    batch = RenderedBatches("test", 3, 64, 64).batch(0)
    metrics = SegmentationMetrics(len(CLASS_NAMES))
    with torch.no_grad():
        metrics.update(teacher(batch["pixel_values"]).argmax(1), batch["labels"])
    assert miou["value"] == pytest.approx(metrics.compute()["mean_iou"], abs=1e-6)
