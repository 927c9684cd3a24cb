"""Unlabelled images for distillation, search and fine-tuning: loading, augmentation and reproducible data order.

The teacher's features are the targets, so only images are needed. Everything random here is a pure function of a
seed: the crop and flip of item `i` in epoch `e` depend only on `(seed, e, i)`, and the order of an epoch only on
`(seed, e)`, so a resumed run sees exactly the batches the interrupted run would have seen.
"""

import logging
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetsError
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image

from ..errors import JetViTUserError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGE_SUFFIXES = frozenset(ImageFolder.EXTENSIONS)
_TABLE_SUFFIXES = frozenset({".parquet", ".arrow"})
_NOTHING = object()


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def load_images(source, image_column: str | None = None, split: str = "train") -> datasets.Dataset:
    """A non-empty `datasets.Dataset` of images from a folder, a saved or local dataset, a dataset, or a generator.

    Args:
        source: One of
            - a directory of images (loaded with the `imagefolder` builder; class subfolders become a `label` column),
            - a directory written by `save_to_disk`, or any local dataset directory `datasets.load_dataset` reads
              (parquet, arrow, csv/json with an image feature, ...),
            - a `datasets.Dataset` or `datasets.DatasetDict`,
            - a generator function or an iterable yielding PIL images or dicts holding a PIL image (materialised with
              `Dataset.from_generator`; it runs once per call, nothing is reused from the cache).
        image_column: The column holding the images. Default: the one column with a `datasets.Image` feature (or the
            one named `"image"` when there are several).
        split: The split to take from a `DatasetDict` (or from a directory that holds several splits).

    Use `find_image_column(dataset)` on the result to get the image column's name.
    """
    if isinstance(source, (str, Path)):
        dataset = _load_directory(Path(source), split)
        origin = str(source)
    elif isinstance(source, datasets.DatasetDict):
        dataset = _select_split(source, split, "the DatasetDict")
        origin = "the DatasetDict"
    elif isinstance(source, datasets.Dataset):
        dataset = source
        origin = "the Dataset"
    elif callable(source) or isinstance(source, Iterable):
        dataset = _from_generator(source)
        origin = f"the dataset generated from {getattr(source, '__name__', type(source).__name__)}"
    else:
        raise ValueError(
            f"Cannot load images from a {type(source).__name__}; expected a directory path, a datasets.Dataset or "
            "DatasetDict, or a generator function / iterable of PIL images."
        )
    if len(dataset) == 0:
        raise ValueError(f"{origin} holds no images (the dataset is empty).")
    find_image_column(dataset, image_column, origin=origin)
    return dataset


def find_image_column(dataset: datasets.Dataset, image_column: str | None = None, origin: str = "the dataset") -> str:
    """The name of `dataset`'s image column (checked when given, found by its `datasets.Image` feature otherwise)."""
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if image_column is not None:
        if image_column not in dataset.features:
            raise ValueError(f"{origin} has no column {image_column!r}; its columns are {dataset.column_names}.")
        if image_column not in image_columns:
            raise ValueError(
                f"Column {image_column!r} of {origin} has feature {dataset.features[image_column]}, not "
                f"datasets.Image(); cast it first, e.g. dataset.cast_column({image_column!r}, datasets.Image())."
            )
        return image_column
    if len(image_columns) == 1:
        return image_columns[0]
    if "image" in image_columns:
        return "image"
    if not image_columns:
        raise ValueError(
            f"{origin} has no image column (no datasets.Image feature); its features are {dict(dataset.features)}."
        )
    raise ValueError(f"{origin} has several image columns {image_columns}; choose one with image_column=.")


def _load_directory(path: Path, split: str) -> datasets.Dataset:
    if not path.exists():
        raise ValueError(f"Image source {path} does not exist.")
    if not path.is_dir():
        raise ValueError(
            f"Image source {path} is not a directory; expected a folder of images, a dataset saved with "
            "save_to_disk, or a local dataset directory."
        )
    try:
        if (path / datasets.config.DATASET_STATE_JSON_FILENAME).is_file() or (
            path / datasets.config.DATASETDICT_JSON_FILENAME
        ).is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            suffixes = {file.suffix.lower() for file in path.rglob("*") if file.is_file()}
            if not suffixes:
                raise ValueError(f"Image source {path} is empty (no readable files).")
            if suffixes & _IMAGE_SUFFIXES and not suffixes & _TABLE_SUFFIXES:
                _check_image_folder(path)
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
            else:
                loaded = datasets.load_dataset(str(path))
    except (OSError, DatasetsError) as error:
        raise ValueError(f"Could not load a dataset from {path}: {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        return _select_split(loaded, split, str(path))
    return loaded


def _check_image_folder(path: Path) -> None:
    """Before the `imagefolder` builder reads `path`: warn about the files it skips (not images and not its metadata,
    e.g. a README) and refuse a file with an image suffix that PIL cannot identify, naming it. Hidden files and
    `__*` folders are skipped silently, as the builder does."""
    skipped = []
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if not file.is_file() or any(part.startswith((".", "__")) for part in relative.parts):
            continue
        if file.suffix.lower() not in _IMAGE_SUFFIXES:
            if file.name not in ImageFolder.METADATA_FILENAMES:
                skipped.append(str(relative))
            continue
        try:
            with Image.open(file):  # reads the header only
                pass
        except (OSError, SyntaxError) as error:
            raise JetViTUserError(f"{file}: not an image ({error}); remove it from {path} or replace it") from error
    if skipped:
        names = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        logger.warning(f"{path}: ignoring {len(skipped)} file(s) that are not images: {names}")


def decoded_row(dataset: datasets.Dataset, index: int, image_column: str) -> dict:
    """Row `index` of `dataset` with its image decoded; an image that does not decode (truncated, corrupt) is a
    `JetViTUserError` naming its file, or its row for an image stored in the dataset."""
    try:
        return dataset[index]
    except (OSError, SyntaxError) as error:  # PIL's errors for unreadable image data
        raw = dataset.cast_column(image_column, datasets.Image(decode=False))[index][image_column]
        where = raw.get("path") or f"image {index} of the dataset"
        raise JetViTUserError(f"{where}: not a readable image ({error})") from error


def _select_split(dataset_dict: datasets.DatasetDict, split: str, origin: str) -> datasets.Dataset:
    if split not in dataset_dict:
        raise ValueError(f"{origin} has no split {split!r}; its splits are {list(dataset_dict)}.")
    return dataset_dict[split]


def _from_generator(source) -> datasets.Dataset:
    items = iter(source() if callable(source) else source)
    first = next(items, _NOTHING)
    if first is _NOTHING:
        raise ValueError(f"The image generator {source!r} yielded nothing.")
    first_row = _as_row(first)
    features = datasets.Features({"image": datasets.Image()}) if isinstance(first, Image.Image) else None

    def rows():
        yield first_row
        for item in items:
            yield _as_row(item)

    # An iterator cannot be hashed into a cache key, and a cached result could be stale: use a fresh fingerprint.
    return datasets.Dataset.from_generator(rows, features=features, fingerprint=uuid.uuid4().hex)


def _as_row(item) -> dict:
    if isinstance(item, Image.Image):
        return {"image": item}
    if isinstance(item, dict):
        return item
    raise ValueError(f"An image generator must yield PIL images or dicts, got a {type(item).__name__}.")


# ----------------------------------------------------------------------------------------------------------------------
# Transforms (PIL in, normalised float tensor out; no torchvision)


def _as_size(size) -> tuple[int, int]:
    """`size` (int or (height, width)) as a (height, width) tuple of positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(side, int) and side > 0 for side in pair):
        raise ValueError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}.")
    return pair


def _check_normalization(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 entries each, with std > 0; got mean={mean}, std={std}.")


def to_normalized_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """An RGB PIL image as a float32 [3, H, W] tensor, scaled to [0, 1] and then normalised per channel."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random area fraction in `scale` with aspect ratio w/h log-uniform in `ratio`; resize to `size` (bicubic).

    The sampling follows torchvision's `RandomResizedCrop` (10 tries, then a central crop with the ratio clamped),
    drawing from the `torch.Generator` passed at call time.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        _as_size(self.size)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}.")

    def get_params(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """A crop box (left, top, crop_width, crop_height) inside a `width` x `height` image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1, dtype=torch.float64).uniform_(*self.scale, generator=generator).item()
            aspect = math.exp(torch.empty(1, dtype=torch.float64).uniform_(*log_ratio, generator=generator).item())
            crop_width = round(math.sqrt(target_area * aspect))
            crop_height = round(math.sqrt(target_area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
                return left, top, crop_width, crop_height
        image_ratio = width / height
        if image_ratio < self.ratio[0]:
            crop_width, crop_height = width, round(width / self.ratio[0])
        elif image_ratio > self.ratio[1]:
            crop_width, crop_height = round(height * self.ratio[1]), height
        else:
            crop_width, crop_height = width, height
        return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height

    def __call__(self, image: Image.Image, generator: torch.Generator) -> Image.Image:
        left, top, crop_width, crop_height = self.get_params(image.width, image.height, generator)
        height, width = _as_size(self.size)
        crop = image.crop((left, top, left + crop_width, top + crop_height))
        return crop.resize((width, height), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class TrainTransform:
    """RGB -> `RandomResizedCrop` -> horizontal flip with probability `flip_probability` -> tensor -> normalise.

    Call as `transform(image, generator)`; the output depends only on the image and the generator's state.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        RandomResizedCrop(self.size, self.scale, self.ratio)  # validates size, scale and ratio
        _check_normalization(self.mean, self.std)
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}.")

    @property
    def crop(self) -> RandomResizedCrop:
        return RandomResizedCrop(self.size, self.scale, self.ratio)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = self.crop(image.convert("RGB"), generator)
        # Always draw, so the flip probability does not shift the random stream.
        if torch.rand(1, generator=generator).item() < self.flip_probability:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(image, self.mean, self.std)


@dataclass(frozen=True)
class EvalTransform:
    """RGB -> bicubic resize to `size` -> tensor -> normalise. Deterministic; `generator` is accepted and ignored."""

    size: int | tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        _as_size(self.size)
        _check_normalization(self.mean, self.std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = _as_size(self.size)
        image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        return to_normalized_tensor(image, self.mean, self.std)


def make_transform(
    size: int | tuple[int, int],
    patch_size: int,
    train: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_probability: float = 0.5,
) -> TrainTransform | EvalTransform:
    """The training (random crop + flip) or evaluation (resize) transform for a model with `patch_size`.

    `size` (int or (height, width)) must be a multiple of `patch_size` on both sides, so the image is an exact grid of
    patches.
    """
    height, width = _as_size(size)
    if not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}.")
    for name, side in (("height", height), ("width", width)):
        if side % patch_size:
            below, above = side // patch_size * patch_size, (side // patch_size + 1) * patch_size
            suggestion = f"{above}" if below == 0 else f"{below} or {above}"
            raise ValueError(
                f"Image {name} {side} is not a multiple of the patch size {patch_size}; use e.g. {suggestion}."
            )
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if train:
        return TrainTransform((height, width), scale, ratio, flip_probability, mean, std)
    return EvalTransform((height, width), mean, std)


# ----------------------------------------------------------------------------------------------------------------------
# Dataset and loader


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed that depends only on (seed, epoch, index)."""
    low, high = np.random.SeedSequence((seed, epoch, index)).generate_state(2, dtype=np.uint32)
    return int(high) << 32 | int(low)


class DistillationImages(torch.utils.data.Dataset):
    """Images from a `datasets.Dataset`, transformed; item `i` is `{"pixel_values": Tensor[3, H, W]}`.

    The random augmentation of item `i` uses a `torch.Generator` seeded by `item_seed(seed, epoch, i)`, so it depends
    only on (seed, epoch, i): not on the access order, the worker, or the process. Call `set_epoch` at each epoch
    (`build_dataloader` and its sampler do this).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        transform: Callable[[Image.Image, torch.Generator], torch.Tensor],
        seed: int = 0,
        image_column: str | None = None,
    ):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self.image_column = find_image_column(dataset, image_column)
        self.dataset = dataset.select_columns(self.image_column)  # decode only the image of a row
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}.")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} is out of range for {len(self)} images.")
        image = decoded_row(self.dataset, index, self.image_column)[self.image_column]
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))
        return {"pixel_values": self.transform(image, generator)}


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices `0..num_samples-1`, shuffled by a generator seeded with `seed + epoch` (or in order).

    Every iteration of the same epoch yields the same order, on every process. `set_epoch` also sets the epoch of
    `dataset` when it has a `set_epoch`, so the augmentations follow the sampler however the epoch is set (by
    `build_dataloader`, or by Accelerate's prepared loader, which calls `set_epoch` at the start of each iteration).
    """

    def __init__(self, num_samples: int, seed: int, epoch: int = 0, shuffle: bool = True, dataset=None):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.dataset = dataset
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = True,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose batches in epoch `epoch` depend only on (`seed`, `epoch`).

    Contract for resuming and data parallelism:
    - The order is a permutation drawn from a `torch.Generator` seeded with `seed + epoch` (`EpochSampler`), the
      same at every iteration and on every process; `dataset.set_epoch(epoch)` is called too, so a
      `DistillationImages` gives the same augmentations.
    - To resume in the middle of epoch `e` after `k` batches (per process): build the loader with `epoch=e` and skip
      the first `k` batches (`accelerator.skip_first_batches(loader, k)`); the remaining batches are the ones the
      interrupted run would have seen.
    - With Accelerate: `accelerator.prepare(loader)` shards whole batches across processes (process `p` of `n` gets
      batches `p, p + n, ...`; `batch_size` is per process). A prepared loader sets the epoch itself from its own
      counter, which starts at 0 and advances after each full pass, so call `prepared.set_epoch(e)` when you do not
      start at epoch 0 (before `skip_first_batches`, which copies it).
    - The loader has its own generator (for worker seeds), so iterating it never draws from torch's global RNG.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}.")
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"The dataset has {len(dataset)} images, fewer than batch_size {batch_size}, so drop_last=True would "
            "leave no batch."
        )
    sampler = EpochSampler(len(dataset), seed, epoch, shuffle, dataset=dataset)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed + epoch),
    )
