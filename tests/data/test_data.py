"""Data layer: loading images from every kind of source, transforms against transformers' PIL image processor, and
data order / augmentations that depend only on (seed, epoch, index), also through Accelerate."""

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from accelerate.state import AcceleratorState, GradientState, PartialState
from PIL import Image
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

from jetvit_hf.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DistillationImages,
    EvalTransform,
    RandomResizedCrop,
    TrainTransform,
    build_dataloader,
    find_image_column,
    load_images,
    make_transform,
)



def random_image(seed: int, height: int = 24, width: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(images) -> list[bytes]:
    """Order-independent fingerprint of a list of images."""
    return sorted(np.asarray(image.convert("RGB")).tobytes() for image in images)


IMAGES = [random_image(i, 20 + i, 30 - i) for i in range(5)]


def image_dataset(images=IMAGES, column: str = "image") -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {column: images, "index": list(range(len(images)))},
        features=datasets.Features({column: datasets.Image(), "index": datasets.Value("int64")}),
    )


def reference_processor(height: int, width: int) -> BitImageProcessorPil:
    """transformers' PIL image processor set to: RGB, bicubic resize to (height, width), rescale, ImageNet normalise."""
    return BitImageProcessorPil(
        size={"height": height, "width": width}, do_center_crop=False, resample=Image.Resampling.BICUBIC,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )


# ----------------------------------------------------------------------------------------------------------------------
# load_images


def test_imagefolder_directory(tmp_path):
    for i, image in enumerate(IMAGES):
        (tmp_path / ("cats" if i % 2 else "dogs")).mkdir(exist_ok=True)
        image.save(tmp_path / ("cats" if i % 2 else "dogs") / f"{i}.png")
    dataset = load_images(tmp_path)
    assert len(dataset) == len(IMAGES) and find_image_column(dataset) == "image"
    assert pixels(dataset["image"]) == pixels(IMAGES)
    assert sorted(dataset.features["label"].names) == ["cats", "dogs"]


def test_saved_dataset_and_dataset_dict(tmp_path):
    image_dataset(column="img").save_to_disk(tmp_path / "single")
    loaded = load_images(tmp_path / "single")
    assert find_image_column(loaded) == "img" and pixels(loaded["img"]) == pixels(IMAGES)

    splits = datasets.DatasetDict({"train": image_dataset(IMAGES[:2]), "validation": image_dataset(IMAGES[2:])})
    splits.save_to_disk(tmp_path / "splits")
    assert pixels(load_images(str(tmp_path / "splits"), split="validation")["image"]) == pixels(IMAGES[2:])
    with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['train', 'validation'\]"):
        load_images(tmp_path / "splits", split="test")


def test_local_parquet_dataset_directory(tmp_path):
    (tmp_path / "data").mkdir()
    image_dataset().to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    loaded = load_images(tmp_path)
    assert find_image_column(loaded) == "image" and pixels(loaded["image"]) == pixels(IMAGES)


def test_datasets_and_generators():
    dataset = image_dataset()
    assert load_images(dataset) is dataset
    assert load_images(datasets.DatasetDict({"train": dataset})) is dataset

    def plain_images():
        yield from IMAGES

    def rows():
        for i, image in enumerate(IMAGES):
            yield {"picture": image, "index": i}

    from_function = load_images(plain_images)
    assert from_function.column_names == ["image"] and pixels(from_function["image"]) == pixels(IMAGES)
    from_rows = load_images(rows)
    assert find_image_column(from_rows) == "picture" and list(from_rows["index"]) == list(range(5))
    assert pixels(load_images(IMAGES)["image"]) == pixels(IMAGES)
    assert pixels(load_images(image for image in IMAGES)["image"]) == pixels(IMAGES)


def test_every_generator_call_runs_the_generator():
    counter = {"calls": 0}

    def changing():
        counter["calls"] += 1
        yield random_image(100 + counter["calls"])

    first, second = load_images(changing), load_images(changing)
    assert counter["calls"] == 2
    assert pixels(first["image"]) != pixels(second["image"])


def test_bad_directories_are_clear_errors_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "image.png").write_bytes(b"not a directory")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here\n")
    for name, message in [
        ("missing", "does not exist"),
        ("image.png", "is not a directory"),
        ("empty", "is empty"),
        ("text", "has no image column"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            load_images(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)


def _nothing():
    yield from ()


def _two_image_columns() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"main": IMAGES, "extra": IMAGES},
        features=datasets.Features({"main": datasets.Image(), "extra": datasets.Image()}),
    )


@pytest.mark.parametrize(
    "make_source, kwargs, message",
    [
        (lambda: datasets.Dataset.from_dict({"text": ["a"]}), {}, r"has no image column .*'text'"),
        (lambda: image_dataset([]), {}, "holds no images"),
        (lambda: _nothing, {}, "yielded nothing"),
        (lambda: [1, 2], {}, "must yield PIL images or dicts, got a int"),
        (lambda: 42, {}, "Cannot load images from a int"),
        (image_dataset, {"image_column": "photo"}, "has no column 'photo'"),
        (image_dataset, {"image_column": "index"}, "not datasets.Image"),
        (_two_image_columns, {}, r"several image columns \['main', 'extra'\]"),
    ],
)
def test_bad_sources_are_clear_errors(make_source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_images(make_source(), **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Transforms


def test_eval_transform_matches_transformers_pil_processor(coffee_image):
    transform = make_transform((112, 154), patch_size=14, train=False)
    assert isinstance(transform, EvalTransform)
    for image in (coffee_image, coffee_image.convert("L"), coffee_image.convert("RGBA")):
        expected = reference_processor(112, 154)(image, return_tensors="pt").pixel_values[0]
        actual = transform(image)
        assert actual.dtype == torch.float32 and actual.shape == (3, 112, 154)
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_normalisation_of_a_flat_colour_is_the_closed_form():
    value = EvalTransform(28)(Image.new("RGB", (50, 40), (255, 0, 128)))
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(value, expected.view(3, 1, 1).expand(3, 28, 28), atol=1e-6, rtol=0)


def test_random_resized_crop_samples_boxes_within_scale_and_ratio():
    crop = RandomResizedCrop(28, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3))
    width, height = 200, 150
    generator = torch.Generator().manual_seed(0)
    boxes = [crop.get_params(width, height, generator) for _ in range(300)]
    for left, top, crop_width, crop_height in boxes:
        assert 0 <= left and left + crop_width <= width and 0 <= top and top + crop_height <= height
        assert 0.25 - 0.02 <= crop_width * crop_height / (width * height) <= 1.0
        assert 3 / 4 - 0.05 <= crop_width / crop_height <= 4 / 3 + 0.05
    assert len(set(boxes)) > 250
    # No box of the allowed ratio fits a 100 x 10 image: torchvision's fallback, a central crop with the ratio clamped.
    fallback = RandomResizedCrop(14, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    assert fallback.get_params(100, 10, torch.Generator().manual_seed(0)) == (45, 0, 10, 10)


def test_train_transform_is_crop_then_flip_then_the_reference_resize_and_normalisation(coffee_image):
    transform = make_transform(56, patch_size=14, train=True)
    assert isinstance(transform, TrainTransform)
    flips = set()
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        left, top, crop_width, crop_height = transform.crop.get_params(*coffee_image.size, generator)
        flip = torch.rand(1, generator=generator).item() < 0.5
        flips.add(flip)
        expected = reference_processor(56, 56)(
            coffee_image.crop((left, top, left + crop_width, top + crop_height)), return_tensors="pt"
        ).pixel_values[0]
        expected = expected.flip(-1) if flip else expected
        actual = transform(coffee_image, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    assert flips == {True, False}

    always, never = TrainTransform(56, flip_probability=1.0), TrainTransform(56, flip_probability=0.0)
    torch.testing.assert_close(
        always(coffee_image, torch.Generator().manual_seed(3)),
        never(coffee_image, torch.Generator().manual_seed(3)).flip(-1),
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=(224, 230), patch_size=14), "width 230 is not a multiple of the patch size 14; use e.g. 224 or 238"),
        (dict(size=10, patch_size=14), "height 10 is not a multiple of the patch size 14; use e.g. 14"),
        (dict(size=0, patch_size=14), "size must be a positive int"),
        (dict(size=(28, 28, 28), patch_size=14), "size must be"),
        (dict(size=28.0, patch_size=14), "size must be"),
        (dict(size=28, patch_size=0), "patch_size must be a positive int"),
        (dict(size=28, patch_size=14, mean=(0.5, 0.5)), "mean and std need 3 entries"),
        (dict(size=28, patch_size=14, std=(1.0, 0.0, 1.0)), "std > 0"),
        (dict(size=28, patch_size=14, scale=(0.5, 0.2)), "scale must satisfy"),
        (dict(size=28, patch_size=14, flip_probability=2.0), "flip_probability must be in"),
    ],
)
def test_make_transform_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_transform(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# DistillationImages and build_dataloader


def distillation_images(seed: int = 0, num_images: int = 10) -> DistillationImages:
    # The same picture in every row, so differences between items come from the augmentation alone.
    images = [random_image(0, 40, 48)] * num_images
    return DistillationImages(image_dataset(images), make_transform(28, patch_size=14), seed=seed)


def test_augmentation_depends_only_on_seed_epoch_and_index():
    images = distillation_images()
    item = images[3]["pixel_values"]
    assert item.shape == (3, 28, 28) and item.dtype == torch.float32

    fresh = distillation_images()
    for index in (7, 1, 3):  # access order does not matter
        other = fresh[index]["pixel_values"]
    torch.testing.assert_close(other, item, atol=0, rtol=0)
    assert not torch.equal(images[4]["pixel_values"], item)
    assert not torch.equal(distillation_images(seed=1)[3]["pixel_values"], item)
    images.set_epoch(1)
    assert not torch.equal(images[3]["pixel_values"], item)
    images.set_epoch(0)
    torch.testing.assert_close(images[3]["pixel_values"], item, atol=0, rtol=0)

    with pytest.raises(IndexError, match="out of range"):
        images[10]
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        images.set_epoch(-1)


def expected_batches(seed: int, epoch: int, batch_size: int, num_images: int = 10) -> list[torch.Tensor]:
    """The epoch's batches built by hand: randperm(seed + epoch), items with the dataset at that epoch."""
    images = distillation_images(num_images=num_images)
    images.set_epoch(epoch)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    full = len(order) // batch_size * batch_size
    return [
        torch.stack([images[i]["pixel_values"] for i in order[start : start + batch_size]])
        for start in range(0, full, batch_size)
    ]


def batches(loader) -> list[torch.Tensor]:
    return [batch["pixel_values"] for batch in loader]


def assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


def test_dataloader_order_and_augmentation_depend_only_on_seed_and_epoch():
    loader = build_dataloader(distillation_images(), batch_size=3, seed=11, epoch=2)
    expected = expected_batches(seed=11, epoch=2, batch_size=3)
    assert len(expected) == len(loader) == 3  # drop_last
    assert_same_batches(batches(loader), expected)
    assert_same_batches(batches(loader), expected)  # iterating again repeats the epoch
    assert_same_batches(batches(build_dataloader(distillation_images(), 3, seed=11, epoch=2)), expected)
    assert not torch.equal(batches(build_dataloader(distillation_images(), 3, seed=11, epoch=3))[0], expected[0])

    ordered = build_dataloader(distillation_images(), 4, seed=11, shuffle=False, drop_last=False)
    assert [len(b) for b in batches(ordered)] == [4, 4, 2]
    torch.testing.assert_close(batches(ordered)[0][1], distillation_images()[1]["pixel_values"], atol=0, rtol=0)

    with pytest.raises(ValueError, match="fewer than batch_size 11"):
        build_dataloader(distillation_images(), batch_size=11, seed=0)


@pytest.fixture
def accelerate_singletons():
    """Leave Accelerate's process-wide state (which its data-loader helpers initialise) as the test found it."""
    classes = (PartialState, AcceleratorState, GradientState)
    saved = [dict(cls._shared_state) for cls in classes]
    yield
    for cls, state in zip(classes, saved):
        cls._shared_state.clear()
        cls._shared_state.update(state)


def test_resume_with_skip_first_batches_and_workers(accelerate_singletons):
    expected = expected_batches(seed=5, epoch=1, batch_size=2)
    resumed = skip_first_batches(build_dataloader(distillation_images(), 2, seed=5, epoch=1), num_batches=2)
    assert_same_batches(batches(resumed), expected[2:])
    with_workers = build_dataloader(distillation_images(), 2, seed=5, epoch=1, num_workers=2)
    assert_same_batches(batches(with_workers), expected)


def test_accelerate_shards_whole_batches_and_follows_the_epoch(accelerate_singletons):
    # 8 images, batches of 2 per process: process p of 2 gets batches p and p + 2 of the single-process order.
    shards = [
        prepare_data_loader(
            build_dataloader(distillation_images(num_images=8), 2, seed=5), num_processes=2, process_index=rank,
            put_on_device=False,
        )
        for rank in range(2)
    ]
    for epoch in (0, 1):  # a prepared loader advances its epoch after each full pass
        expected = expected_batches(seed=5, epoch=epoch, batch_size=2, num_images=8)
        assert_same_batches(batches(shards[0]), expected[0::2])
        assert_same_batches(batches(shards[1]), expected[1::2])

    # Resuming: set the epoch on the prepared loader, then skip what this process already saw.
    expected = expected_batches(seed=5, epoch=4, batch_size=2, num_images=8)
    shards[1].set_epoch(4)
    assert_same_batches(batches(skip_first_batches(shards[1], num_batches=1)), expected[3::2])
