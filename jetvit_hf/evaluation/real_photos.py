"""A sanity check of a depth student against its depth teacher on real photos, to report beside the synthetic-scene
numbers: (a) student-vs-teacher agreement on scikit-image's bundled colour photos, (b) both models against the true
disparity of the Middlebury 2014 motorcycle (`skimage.data.stereo_motorcycle`, bundled at a quarter resolution).

Images are prepared as `evaluator` prepares its evaluation set (`images.build_eval_images`: bicubic resize by
`images.model_input_size` to a multiple of the patch size, ImageNet normalisation). As in `evaluator`, the student is
compared with the teacher at the model's resolution, and each model with ground truth at the image's original
resolution (bilinear upsampling). Metrics are `metrics.depth_metrics` in disparity mode: per image, least-squares
scale and shift of the predicted disparity onto the reference disparity over its valid (finite, positive) pixels,
then AbsRel and delta1. Only four photos qualify, so their bootstrap interval is coarse; the report gives n.
The same photos are textures in the synthetic scenes (`data.render_layouts.TEXTURES`), so they are not unseen images.
"""

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DepthAnythingForDepthEstimation

from ..device import Placement, resolve_placement
from ..train.targets import unwrap
from .bootstrap import bootstrap
from .depth import is_depth_model, predicted_depth
from .images import build_eval_images, comparable_to_teacher, resize_map
from .metrics import depth_metrics

# scikit-image's colour photos of real scenes that ship inside its wheel (no download). Left out: `cat` (the same
# photo as `chelsea`), `hubble_deep_field` (stars, no depth structure), `immunohistochemistry` and `retina`
# (microscopy and fundus images), `colorwheel` and `logo` (graphics), and the motorcycle pair (scored on its own).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
REPORTED_METRICS = ("abs_rel", "delta1")


def _depth_model_sizes(model: torch.nn.Module, role: str) -> tuple[int, int | tuple[int, int]]:
    """(patch size, default image size) of a relative-depth model, or a ValueError naming its `role`."""
    try:
        jetvit_depth = is_depth_model(model)
    except TypeError:  # neither a JetViT model nor a wrapper of one
        jetvit_depth = False
    if isinstance(model, DepthAnythingForDepthEstimation):
        config, backbone = model.config, model.config.backbone_config
    elif jetvit_depth:
        config = backbone = unwrap(model).config
    else:
        raise ValueError(f"The real-photo check needs depth models (JetViTForDepthEstimation or transformers "
                         f"DepthAnythingForDepthEstimation); the {role} is a {type(model).__name__}.")
    if config.depth_estimation_type != "relative":
        raise ValueError(f"The real-photo check compares relative disparity; the {role} predicts "
                         f"{config.depth_estimation_type} depth.")
    size = backbone.image_size
    return backbone.patch_size, size if isinstance(size, int) else tuple(size)


def _disparity(model: torch.nn.Module, pixel_values: torch.Tensor, placement: Placement) -> torch.Tensor:
    """`[H, W]` float32 predicted disparity on the CPU of one `[1, 3, H, W]` image, in `placement`'s autocast."""
    if isinstance(model, DepthAnythingForDepthEstimation):
        parameter = next(model.parameters())
        with placement.autocast():
            prediction = model(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).predicted_depth
    else:
        prediction = predicted_depth(model, pixel_values, placement)
    return prediction[0].float().cpu()


def _valid(disparity: torch.Tensor) -> torch.Tensor:
    """The pixels `DepthMetrics` scores against a disparity reference: finite and positive."""
    return torch.isfinite(disparity) & (disparity > 0)


def _metrics(prediction: torch.Tensor, reference: torch.Tensor) -> dict:
    """AbsRel and delta1 of `prediction` aligned (scale and shift) to the disparity `reference` on its valid pixels."""
    result = depth_metrics(prediction, reference, mode="disparity", target_is_depth=False)
    return {name: result[name] for name in REPORTED_METRICS}


def _summary(values: list[float]) -> dict:
    result = bootstrap(values)
    return {"mean": result["mean"], "ci95": result["ci95"], "se": result["se"], "n": result["num_images"]}


def _rgb(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def real_photo_report(model: torch.nn.Module, teacher: torch.nn.Module, *, image_size=None,
                      device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                      progress: bool = False) -> dict:
    """Student (`model`) against teacher on real photos; returns a JSON-serialisable dict.

    `{"photos": {"names", "per_photo": {name: {"abs_rel", "delta1", "input_size"}}, "student_vs_teacher": {"abs_rel":
    {"mean", "ci95", "se", "n"}, "delta1": ...}}, "stereo_motorcycle": {"teacher": {"abs_rel", "delta1"}, "student":
    ..., "valid_pixels", "total_pixels", "input_size"}, "image_size", "device"}`. Metrics are fractions (not x100).

    Both models are relative-depth models (JetViTForDepthEstimation or transformers DepthAnythingForDepthEstimation)
    with one patch size; they are put in eval mode and moved to `device`. `image_size` (an int short side or an
    (height, width) pair) defaults to the student's configured image size.
    """
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("The real-photo check needs scikit-image: pip install scikit-image") from error
    patch_size, default_size = _depth_model_sizes(model, "student")
    teacher_patch_size, _ = _depth_model_sizes(teacher, "teacher")
    if teacher_patch_size != patch_size:
        raise ValueError(f"Student and teacher must share a patch size, got {patch_size} and {teacher_patch_size}.")
    image_size = image_size or default_size
    placement = resolve_placement(device, dtype)
    for network in (model, teacher):
        placement.module(network).eval()
    photos = build_eval_images([_rgb(getattr(skimage.data, name)()) for name in PHOTOS], patch_size, image_size,
                               batch_size=1)
    left, _, true_disparity = skimage.data.stereo_motorcycle()
    true_disparity = torch.from_numpy(true_disparity)
    left_pixels = build_eval_images([_rgb(left)], patch_size, image_size).batches[0]
    per_photo = {}
    with torch.inference_mode():
        for name, pixel_values in zip(PHOTOS, tqdm(photos.batches, desc="real photos", disable=not progress)):
            student = _disparity(model, pixel_values, placement)
            reference = _disparity(teacher, pixel_values, placement)
            if not _valid(reference).any():
                raise ValueError(f"The teacher predicts no finite positive disparity on photo {name!r}.")
            per_photo[name] = {**_metrics(student, comparable_to_teacher(reference)),
                               "input_size": list(pixel_values.shape[-2:])}
        size = tuple(true_disparity.shape)
        teacher_left = resize_map(_disparity(teacher, left_pixels, placement), size)
        student_left = resize_map(_disparity(model, left_pixels, placement), size)
    motorcycle = {"teacher": _metrics(teacher_left, true_disparity), "student": _metrics(student_left, true_disparity),
                  "valid_pixels": int(_valid(true_disparity).sum()), "total_pixels": true_disparity.numel(),
                  "input_size": list(left_pixels.shape[-2:])}
    summary = {name: _summary([per_photo[photo][name] for photo in PHOTOS]) for name in REPORTED_METRICS}
    return {
        "photos": {"names": list(PHOTOS), "per_photo": per_photo, "student_vs_teacher": summary},
        "stereo_motorcycle": motorcycle,
        "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else image_size,
        "device": placement.describe(),
    }


def format_real_photo_report(report: dict) -> str:
    """A few readable lines of a `real_photo_report`."""
    photos, motorcycle = report["photos"], report["stereo_motorcycle"]
    lines = [f"Real photos (scikit-image {', '.join(photos['names'])}), student vs teacher, "
             f"n={photos['student_vs_teacher']['abs_rel']['n']}, mean [95% bootstrap CI]:"]
    for name, label in (("abs_rel", "AbsRel"), ("delta1", "delta1")):
        values = photos["student_vs_teacher"][name]
        low, high = values["ci95"]
        lines.append(f"  {label}: {values['mean']:.4f} [{low:.4f}, {high:.4f}]")
    lines.append("  per photo (AbsRel / delta1): " + ", ".join(
        f"{name} {values['abs_rel']:.4f} / {values['delta1']:.4f}" for name, values in photos["per_photo"].items()))
    lines.append(f"Middlebury motorcycle vs true disparity ({motorcycle['valid_pixels']} of "
                 f"{motorcycle['total_pixels']} pixels valid), AbsRel / delta1:")
    for name in ("teacher", "student"):
        lines.append(f"  {name}: {motorcycle[name]['abs_rel']:.4f} / {motorcycle[name]['delta1']:.4f}")
    return "\n".join(lines)
