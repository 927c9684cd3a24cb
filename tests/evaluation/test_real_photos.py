"""The real-photo check: a student identical to the teacher agrees perfectly, a hybrid student's numbers equal a
float64 numpy computation from plain forwards on images prepared here by hand, and models without a relative depth head
are refused. The teacher is conftest's tiny Depth Anything V2 with a steep head (`depth_source`)."""

import json

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from jetvit_hf.convert import convert_to_jetvit
from jetvit_hf.evaluation.real_photos import PHOTOS, format_real_photo_report, real_photo_report

HYBRID = ["linear", "window", "full", "linear", "window", "linear"]
# the short side scaled to the tiny models' image size 56, each side rounded to a multiple of their patch size 14
INPUT_SIZES = {"astronaut": (56, 56), "chelsea": (56, 84), "coffee": (56, 84), "rocket": (56, 84)}
MOTORCYCLE_INPUT_SIZE = (56, 84)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def pixels(array: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """`[1, 3, H, W]` model input: bicubic resize, [0, 1], ImageNet normalisation."""
    resized = Image.fromarray(array[..., :3]).resize(size[::-1], Image.Resampling.BICUBIC)
    values = (np.asarray(resized, dtype=np.float64) / 255 - MEAN) / STD
    return torch.from_numpy(values).float().permute(2, 0, 1)[None]


def disparity(model, pixel_values: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """The model's float64 disparity, upsampled bilinearly (corners aligned) to `size` when given."""
    with torch.no_grad():
        prediction = model(pixel_values=pixel_values).predicted_depth[None]
    if size is not None:
        prediction = F.interpolate(prediction, size=size, mode="bilinear", align_corners=True)
    return prediction[0, 0].double().numpy()


def long_hand(prediction: np.ndarray, reference: np.ndarray) -> dict:
    """AbsRel and delta1 after least-squares scale and shift onto `reference` over its finite positive pixels."""
    valid = np.isfinite(reference) & (reference > 0)
    p, t = prediction[valid], reference[valid]
    (scale, shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), t, rcond=None)
    aligned = scale * p + shift
    ratio = np.maximum(aligned / t, t / aligned)
    return {"abs_rel": np.mean(np.abs(aligned - t) / t), "delta1": np.mean((aligned > 0) & (ratio < 1.25))}


def test_identical_student_agrees_perfectly(depth_source):
    directory, source = depth_source
    for student in (source, convert_to_jetvit(directory)):  # the teacher itself, and its all-full JetViT
        report = real_photo_report(student, source, device="cpu")
        photos = report["photos"]
        assert photos["names"] == list(PHOTOS) and list(photos["per_photo"]) == list(PHOTOS)
        for values in photos["per_photo"].values():
            assert values["abs_rel"] == pytest.approx(0, abs=1e-5) and values["delta1"] == 1.0
        assert photos["student_vs_teacher"]["abs_rel"]["mean"] == pytest.approx(0, abs=1e-5)
        assert photos["student_vs_teacher"]["delta1"] == {"mean": 1.0, "ci95": [1.0, 1.0], "se": 0.0, "n": 4}
        motorcycle = report["stereo_motorcycle"]
        for name in ("abs_rel", "delta1"):
            assert motorcycle["student"][name] == pytest.approx(motorcycle["teacher"][name], rel=1e-5)
        assert json.loads(json.dumps(report)) == report


def test_hybrid_student_matches_long_hand(depth_source):
    directory, source = depth_source
    torch.manual_seed(0)
    student = convert_to_jetvit(directory, HYBRID, window_size=2).eval()
    report = real_photo_report(student, source, device="cpu", dtype="float32")
    assert report["image_size"] == 56 and report["device"]["device"] == "cpu"

    photos = report["photos"]
    for name in PHOTOS:
        size = INPUT_SIZES[name]
        image = pixels(getattr(skimage.data, name)(), size)
        expected = long_hand(disparity(student, image), disparity(source, image))
        measured = photos["per_photo"][name]
        assert measured["input_size"] == list(size)
        assert measured["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-4)
        assert measured["delta1"] == pytest.approx(expected["delta1"], abs=1e-3)
        assert measured["abs_rel"] > 1e-3  # the hybrid disagrees with its teacher (rounding alone gives ~1e-7)
    per_photo_abs_rel = [photos["per_photo"][name]["abs_rel"] for name in PHOTOS]
    summary = photos["student_vs_teacher"]["abs_rel"]
    assert summary["n"] == 4 and summary["mean"] == pytest.approx(np.mean(per_photo_abs_rel), rel=1e-12)
    assert min(per_photo_abs_rel) <= summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert summary["ci95"][1] <= max(per_photo_abs_rel) and summary["se"] > 0

    left, _, true_disparity = skimage.data.stereo_motorcycle()
    valid = np.isfinite(true_disparity) & (true_disparity > 0)
    motorcycle = report["stereo_motorcycle"]
    assert motorcycle["valid_pixels"] == valid.sum() < motorcycle["total_pixels"] == 500 * 741
    assert motorcycle["input_size"] == list(MOTORCYCLE_INPUT_SIZE)
    image = pixels(left, MOTORCYCLE_INPUT_SIZE)
    for name, model in (("teacher", source), ("student", student)):
        expected = long_hand(disparity(model, image, true_disparity.shape), true_disparity.astype(np.float64))
        assert motorcycle[name]["abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-4)
        assert motorcycle[name]["delta1"] == pytest.approx(expected["delta1"], abs=1e-4)

    text = format_real_photo_report(report)
    assert "n=4" in text and f"{summary['mean']:.4f}" in text
    assert f"{motorcycle['student']['abs_rel']:.4f} / {motorcycle['student']['delta1']:.4f}" in text


@pytest.mark.parametrize("role, make_model, match", [
    ("student", lambda checkpoint: checkpoint("dinov2")[1], "the student is a Dinov2Model"),
    ("teacher", lambda checkpoint: convert_to_jetvit(checkpoint("dinov2")[0]), "the teacher is a JetViTModel"),
    ("teacher", lambda checkpoint: checkpoint("depth_anything_v2_metric")[1], "the teacher predicts metric depth"),
])
def test_rejects_models_without_a_relative_depth_head(depth_source, source_checkpoint, role, make_model, match):
    other = make_model(source_checkpoint)
    models = (other, depth_source[1]) if role == "student" else (depth_source[1], other)
    with pytest.raises(ValueError, match=match):
        real_photo_report(*models, device="cpu")
