"""Evaluation images: a fixed set of model inputs in batches, with each image's original size and, where the data
has them, ground-truth depth and segmentation labels; loaded from anything `data.images.load_images` reads or from
DA-2K's annotations.

Images are resized for the model (`model_input_size`); predictions are compared with ground truth at the image's
original resolution (`resize_map`, bilinear upsampling) and with the teacher at the model's resolution.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import JetViTUserError
from ..models.jetvit.configuration_jetvit import JetViTConfig
from .metrics import load_da2k_annotations

IGNORE_INDEX = 255
MAX_EVAL_DEPTH = 80.0  # metres: ground truth beyond it is left out of every depth measure (KITTI's evaluation cap)
TEACHER_DISPARITY_FLOOR = 0.01  # of the teacher's median disparity: below it, 100x the median depth, not compared


@dataclass
class EvalImages:
    """A fixed evaluation set: model inputs in batches, plus each image's original size and optional ground truth.

    Image `i` (in batch order) has `original_sizes[i] = (H, W)` and, when the data has them, `depth[i]` (`[H, W]`
    float32 metres, 0 or NaN where invalid) and `labels[i]` (`[H, W]` int64 class ids, `IGNORE_INDEX` unlabelled).
    A batch holds consecutive images of one model input size.
    """

    batches: list[torch.Tensor]
    original_sizes: list[tuple[int, int]]
    depth: list[torch.Tensor] | None = None
    labels: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.original_sizes)

    def batch_slices(self):
        """`(pixel_values, first_image_index)` for each batch."""
        start = 0
        for pixel_values in self.batches:
            yield pixel_values, start
            start += len(pixel_values)

    def to(self, device: torch.device) -> "EvalImages":
        """The same set with its batches and ground truth on `device` (copied once, not at every use)."""

        def moved(maps):
            return None if maps is None else [tensor.to(device) for tensor in maps]

        return EvalImages(moved(self.batches), self.original_sizes, moved(self.depth), moved(self.labels))


def model_input_size(height: int, width: int, image_size, patch_size: int) -> tuple[int, int]:
    """The model input size of a `height` x `width` image: `image_size` (H, W) as given, or an int: the short side
    scaled to `image_size` with the aspect ratio kept, each side rounded to the nearest multiple of `patch_size`."""
    if isinstance(image_size, (tuple, list)):
        return int(image_size[0]), int(image_size[1])
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int or an (height, width) pair, got {image_size!r}.")
    scale = image_size / min(height, width)
    return tuple(max(patch_size, round(side * scale / patch_size) * patch_size) for side in (height, width))


def default_image_size(config: JetViTConfig):
    size = config.image_size
    return size if isinstance(size, int) else tuple(size)


def build_eval_images(images, patch_size: int, image_size, batch_size: int = 8, depth=None,
                      labels=None) -> EvalImages:
    """`EvalImages` from PIL images (and optional per-image ground-truth arrays), resized by `model_input_size`."""
    from ..data.images import make_transform

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    batches, current, current_size, original_sizes = [], [], None, []
    for image in images:
        size = model_input_size(image.height, image.width, image_size, patch_size)
        if current and (size != current_size or len(current) == batch_size):
            batches.append(torch.stack(current))
            current = []
        current.append(make_transform(size, patch_size, train=False)(image))
        current_size = size
        original_sizes.append((image.height, image.width))
    if current:
        batches.append(torch.stack(current))
    for name, maps in (("depth", depth), ("labels", labels)):
        for index, (array, size) in enumerate(zip(maps or [], original_sizes)):
            if tuple(array.shape) != size:
                raise ValueError(f"Image {index}: its {name} map is {tuple(array.shape)} but the image is {size}.")
    return EvalImages(batches, original_sizes, depth, labels)


def load_eval_images(data, patch_size: int, image_size, num_images: int | None = None, batch_size: int = 8,
                     image_column: str | None = None) -> EvalImages:
    """The first `num_images` images of `data` (anything `data.load_images` reads, e.g. `render_stream.render_dataset`),
    with its `depth` and `labels` columns as ground truth when it has them. Depth beyond `MAX_EVAL_DEPTH` is set to 0
    (not valid), as KITTI caps its evaluation at 80 m: a rendered ground plane reaches the horizon, where a disparity
    near 0 would make every relative error meaningless."""
    if isinstance(data, EvalImages):  # before importing `datasets`, which a machine given only tensors may lack
        return data
    from ..data.images import decoded_row, find_image_column, load_images

    dataset = load_images(data, image_column=image_column)
    column = find_image_column(dataset, image_column)
    if num_images is not None:
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}.")
        dataset = dataset.select(range(min(num_images, len(dataset))))
    truth = [name for name in ("depth", "labels") if name in dataset.column_names]
    rows = dataset.select_columns([column, *truth]).with_format("numpy", columns=truth, output_all_columns=True)
    images, depth, labels = [], [], []
    for index in range(len(rows)):
        row = decoded_row(rows, index, column)
        images.append(row[column].convert("RGB"))
        if "depth" in truth:
            values = torch.as_tensor(np.asarray(row["depth"], dtype=np.float32))
            depth.append(torch.where(values <= MAX_EVAL_DEPTH, values, 0.0))
        if "labels" in truth:
            labels.append(torch.as_tensor(np.asarray(row["labels"], dtype=np.int64)))
    return build_eval_images(images, patch_size, image_size, batch_size, depth or None, labels or None)


def load_da2k_images(annotations_path: str | os.PathLike, patch_size: int, image_size,
                     batch_size: int = 8) -> tuple[EvalImages, list[list[dict]]]:
    """DA-2K's images (paths relative to the annotation file's folder) and each image's pairs, in the same order."""
    from PIL import Image

    annotations = load_da2k_annotations(annotations_path)
    if not annotations:
        raise ValueError(f"{annotations_path}: no annotated images.")
    root = Path(annotations_path).parent
    images = []
    for name in annotations:
        if not (root / name).is_file():
            raise ValueError(f"{annotations_path}: image {name!r} not found under {root}.")
        try:
            with Image.open(root / name) as image:
                images.append(image.convert("RGB"))
        except (OSError, SyntaxError) as error:  # PIL's errors for unreadable image data
            raise JetViTUserError(f"{root / name}: not a readable image ({error})") from error
    eval_images = build_eval_images(images, patch_size, image_size, batch_size)
    return eval_images, list(annotations.values())


def model_inputs(pixel_values: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """`pixel_values` on the device and in the dtype of `model`'s parameters."""
    parameter = next(model.parameters())
    return pixel_values.to(device=parameter.device, dtype=parameter.dtype)


def resize_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An `[H, W]` map or `[C, H, W]` maps resized bilinearly to `size` (`align_corners=True`, as Depth Anything's
    `infer_image`; for logits DINOv3 uses `False`, see `probe.probe_logits`)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    batched = values[None, None] if values.ndim == 2 else values[None]
    resized = F.interpolate(batched.float(), size=size, mode="bilinear", align_corners=True)
    return resized[0, 0] if values.ndim == 2 else resized[0]


def comparable_to_teacher(maps: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A teacher's `[H, W]` disparity map with NaN (not valid for `DepthMetrics`) where a relative error against it
    means nothing: outside `valid` (default: where it is positive) and where it is below `TEACHER_DISPARITY_FLOOR` of
    its median there (a teacher that puts a pixel at the horizon, near 0 after its ReLU, would make any error there
    unbounded)."""
    valid = (maps > 0) if valid is None else valid.to(maps.device)
    if valid.any():
        valid = valid & (maps >= TEACHER_DISPARITY_FLOOR * maps[valid].float().median())
    return torch.where(valid, maps, float("nan"))


def within_ground_truth(maps: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """`comparable_to_teacher` restricted to where the image's ground truth (`[H', W']`, nearest-resized) has valid
    depth: not the sky, not beyond `MAX_EVAL_DEPTH`."""
    valid = F.interpolate((depth > 0)[None, None].float(), size=maps.shape[-2:], mode="nearest")[0, 0].bool()
    return comparable_to_teacher(maps, valid)


def require_labels(images: EvalImages, what: str) -> None:
    if images.labels is None:
        raise ValueError(f"{what} needs segmentation labels: a `labels` column of [H, W] class ids in the data "
                         "(e.g. jetvit_hf.data.render_stream.render_dataset).")
