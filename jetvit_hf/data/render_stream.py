"""Rendered scenes as data: disjoint seed splits, a resumable stream of batches, a training dataset that renders whole
batches on the training device, and a `datasets` export.

Scene seeds come in named, disjoint ranges (`SPLITS`): `train` for training, `search` for choosing architectures and
`test` for evaluation, so no evaluation scene ever trains or selects anything. Every batch is a pure function of
its position: the same scenes in every run, whatever was rendered before.
"""

import hashlib
import importlib.metadata
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .images import IMAGENET_MEAN, IMAGENET_STD
from .render import SceneRender, check_render_options, render_scenes
from .render_layouts import check_positive

SPLITS = {
    "train": range(0, 10**9),
    "search": range(10**9, 10**9 + 10**6),
    "test": range(2 * 10**9, 2 * 10**9 + 10**6),
}


def split_seeds(split: str, count: int, offset: int = 0) -> range:
    """The seeds of scenes `offset` .. `offset + count - 1` of `split` (one of `SPLITS`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    check_positive("count", count)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}.")
    seeds = SPLITS[split]
    if offset + count > len(seeds):
        raise ValueError(
            f"count: scenes {offset}..{offset + count - 1} do not fit in split {split!r}, which has {len(seeds)}."
        )
    return seeds[offset : offset + count]


def model_inputs(scenes: SceneRender, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> dict[str, torch.Tensor]:
    """`pixel_values` (the images normalised by `mean` and `std`), `depth`, `labels`, `valid` and `seeds`, all on the
    rendering device."""
    device = scenes.image.device
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return {"pixel_values": (scenes.image - mean) / std, "depth": scenes.depth, "labels": scenes.labels,
            "valid": scenes.valid, "seeds": scenes.seeds.to(device)}


class RenderedBatches:
    """Batches of `batch_size` scenes of `split`, rendered at `height` x `width` on `device` (`model_inputs` dicts).

    Batch k holds scenes `offset + k * batch_size` onwards of the split, so it is the same in every run; iteration
    starts at batch `start_index` (to resume a run) and ends where the split does. `chunk_size`, `classes` and
    `compiled` go to the renderer (`render.render_layouts`, `render_layouts.scene_layouts`).
    """

    def __init__(self, split: str, batch_size: int, height: int, width: int, device: torch.device | str = "cpu",
                 start_index: int = 0, offset: int = 0, chunk_size: int | None = None, classes=None,
                 compiled: bool = False):
        split_seeds(split, batch_size, offset)  # checks split, batch_size and offset
        self.total = (len(SPLITS[split]) - offset) // batch_size
        if isinstance(start_index, bool) or not isinstance(start_index, int) or not 0 <= start_index < self.total:
            raise ValueError(f"start_index must be an int in [0, {self.total}), got {start_index!r}.")
        self.split, self.batch_size, self.offset, self.start_index = split, batch_size, offset, start_index
        check_render_options(height, width, chunk_size, classes)
        self.render_options = dict(height=height, width=width, device=device, chunk_size=chunk_size,
                                   classes=classes, compiled=compiled)

    def __len__(self) -> int:
        return self.total - self.start_index

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch `index` of the stream (counted from the split's scene `offset`, whatever `start_index` is)."""
        seeds = split_seeds(self.split, self.batch_size, self.offset + index * self.batch_size)
        return model_inputs(render_scenes(seeds, **self.render_options))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in range(self.start_index, self.total):
            yield self.batch(index)


class RenderedSceneDataset(torch.utils.data.Dataset):
    """A training dataset of `scenes_per_epoch` new scenes of `split` every epoch, rendered on `device` when asked for.

    Item i of epoch e (`set_epoch`) is scene `e * scenes_per_epoch + i` of the split, as a `model_inputs` dict of one
    scene. A DataLoader fetches a whole batch through `__getitems__`, which renders its scenes at once; with a CUDA
    `device` use it from the main process (`num_workers=0`). Works with `images.build_dataloader`, so the order and a
    resume follow (seed, epoch) as for stored images.
    """

    def __init__(self, split: str, scenes_per_epoch: int, height: int, width: int,
                 device: torch.device | str = "cpu", chunk_size: int | None = None, classes=None,
                 compiled: bool = False):
        split_seeds(split, scenes_per_epoch)  # checks split and scenes_per_epoch
        check_render_options(height, width, chunk_size, classes)
        self.split, self.scenes_per_epoch = split, scenes_per_epoch
        self.render_options = dict(height=height, width=width, device=device, chunk_size=chunk_size,
                                   classes=classes, compiled=compiled)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}.")
        split_seeds(self.split, self.scenes_per_epoch, epoch * self.scenes_per_epoch)  # checks the epoch fits
        self.epoch = epoch

    def __len__(self) -> int:
        return self.scenes_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        if any(not 0 <= index < len(self) for index in indices):
            raise IndexError(f"Indices {list(indices)} are not all in [0, {len(self)}).")
        seeds = split_seeds(self.split, len(self), self.epoch * len(self))
        batch = model_inputs(render_scenes([seeds[index] for index in indices], **self.render_options))
        return [{name: values[row] for name, values in batch.items()} for row in range(len(indices))]


def render_dataset(split: str, count: int, height: int, width: int, offset: int = 0,
                   device: torch.device | str = "cpu", chunk_size: int | None = None, classes=None):
    """Scenes `offset` .. `offset + count - 1` of `split` as a `datasets.Dataset` (to save with `save_to_disk`, or
    for `data.images.load_images` and `evaluation.images.load_eval_images`): `image` (Image), `depth` (float32 [H, W]
    array, metres, 0 = sky), `labels` (uint8 [H, W] array of `render_layouts.CLASS_NAMES` ids) and `seed` (int64;
    re-render a row with `render.render_scenes`).

    Rendered on `device`, `chunk_size` scenes at a time (default: 64); the result is cached in the datasets cache
    under a key made of these arguments, the torch and scikit-image versions and a hash of the renderer's source.
    """
    import datasets

    seeds = split_seeds(split, count, offset)
    check_render_options(height, width, chunk_size, classes)
    features = datasets.Features({
        "image": datasets.Image(),
        "depth": datasets.Array2D((height, width), "float32"),
        "labels": datasets.Array2D((height, width), "uint8"),
        "seed": datasets.Value("int64"),
    })
    options = dict(height=height, width=width, device=str(device), chunk_size=chunk_size, classes=classes)
    return datasets.Dataset.from_generator(
        _dataset_rows, features=features, gen_kwargs={"seeds": list(seeds), "options": options},
        fingerprint=_cache_key(split, count, offset, options),
    )


def _dataset_rows(seeds: list[int], options: dict):
    from PIL import Image

    step = options["chunk_size"] or 64
    for start in range(0, len(seeds), step):
        scenes = render_scenes(seeds[start : start + step], **options)
        pixels = (scenes.image * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        depth, labels = scenes.depth.cpu().numpy(), scenes.labels.to(torch.uint8).cpu().numpy()
        for row, seed in enumerate(scenes.seeds.tolist()):
            yield {"image": Image.fromarray(pixels[row]), "depth": depth[row], "labels": labels[row], "seed": seed}


def _cache_key(*arguments) -> str:
    sources = b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("render*.py")))
    versions = (torch.__version__, importlib.metadata.version("scikit-image"))
    digest = hashlib.sha256(sources + repr((versions, arguments)).encode()).hexdigest()
    return f"jetvit-render-{digest[:24]}"
