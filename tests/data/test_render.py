"""The batched scene renderer: determinism, batch invariance, depth against closed forms, classes, shadows, seed
splits, bad input, the datasets export and resumable streams of batches (CPU, tiny images)."""

import math

import numpy as np
import pytest
import torch

from jetvit_hf.data.render import SceneBatch, check_render_options, render_layouts, render_scenes
from jetvit_hf.data.render_layouts import (
    BLOCK_SLOTS,
    CAR,
    CAR_SIZE,
    CLASS_NAMES,
    CRATE,
    CRATE_SIZE,
    CYLINDER_SLOTS,
    GROUND,
    POST,
    POST_HEIGHT,
    POST_RADIUS,
    SKY,
    scene_layouts,
)

try:  # the streams need `datasets`, which a machine kept for GPU tests may lack
    import datasets
    from accelerate.data_loader import skip_first_batches

    from jetvit_hf.data.images import IMAGENET_MEAN, IMAGENET_STD
    from jetvit_hf.data.render_stream import SPLITS, RenderedBatches, render_dataset, split_seeds
    from jetvit_hf.train.config import TrainConfig
    from jetvit_hf.train.loader import build_rendered_loader
except ImportError:
    datasets = None

needs_datasets = pytest.mark.skipif(datasets is None, reason="needs datasets")

def assert_same_scenes(a, b) -> None:
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.depth, b.depth, rtol=1e-6, atol=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.valid, b.valid)


def test_a_scene_is_a_function_of_its_seed():
    first, again = render_scenes([7, 8], 32, 48), render_scenes([7, 8], 32, 48)
    assert_same_scenes(first, again)
    assert not torch.equal(first.image[0], first.image[1])
    assert first.image.shape == (2, 3, 32, 48) and first.image.dtype == torch.float32
    assert 0 <= first.image.min() and first.image.max() <= 1
    assert first.labels.dtype == torch.int64 and first.valid.dtype == torch.bool
    assert torch.equal(first.valid, first.depth > 0) and torch.equal(first.valid, first.labels != SKY)


def test_a_scene_alone_equals_the_same_scene_in_a_batch():
    alone = render_scenes([11], 32, 48)
    batch = render_scenes([3, 11, 5], 32, 48, chunk_size=2)
    rows = slice(1, 2)
    assert_same_scenes(alone, type(alone)(batch.image[rows], batch.depth[rows], batch.labels[rows], batch.valid[rows],
                                          batch.seeds[rows]))


def test_ground_depth_is_exact_planar_depth_below_the_horizon():
    height, width, camera_height, pitch, fov = 32, 48, 1.7, math.radians(10), math.radians(60)
    layout = SceneBatch.blank(1)
    layout.camera_height[0], layout.pitch[0], layout.fov[0] = camera_height, pitch, fov
    scene = render_layouts(layout, height, width)
    focal = height / 2 / math.tan(fov / 2)
    up = (height / 2 - 0.5 - np.arange(height)) / focal  # each row's ray, above the optical axis
    below = np.tan(pitch) > up  # rays below the horizon: angle(row) < pitch
    expected = camera_height / (np.sin(pitch) - up * np.cos(pitch))  # ray parameter where y reaches 0, unit forward
    labels, depth = scene.labels[0].numpy(), scene.depth[0].numpy()
    assert (labels[below] == GROUND).all() and (labels[~below] == SKY).all()
    np.testing.assert_allclose(depth[below], np.broadcast_to(expected[:, None], (height, width))[below], rtol=2e-6)
    assert (depth[~below] == 0).all() and 0 < below.sum() < height  # the horizon is in view


def test_a_post_appears_as_tall_as_the_pinhole_model_says():
    height, width, distance = 64, 32, 8.0
    layout = SceneBatch.blank(1)
    layout.camera_height[0] = 1.0
    slot = CYLINDER_SLOTS[0]
    layout.present[0, slot], layout.label[0, slot] = True, POST
    layout.center[0, slot] = torch.tensor([0.0, POST_HEIGHT / 2, distance], dtype=torch.float64)
    layout.size[0, slot] = torch.tensor([POST_RADIUS, POST_HEIGHT / 2, POST_RADIUS], dtype=torch.float64)
    scene = render_layouts(layout, height, width)
    focal = height / 2 / math.tan(math.radians(30))
    post = scene.labels[0] == POST
    rows, columns = post.nonzero(as_tuple=True)
    right = (columns.double() + 0.5 - width / 2) / focal  # the ray (right, up, 1) meets x^2 + (z - d)^2 = r^2:
    a, c = right**2 + 1, distance**2 - POST_RADIUS**2
    expected = (distance - torch.sqrt(distance**2 - a * c)) / a
    torch.testing.assert_close(scene.depth[0][post].double(), expected, rtol=2e-6, atol=0)
    image_height = post[:, width // 2].sum().item()
    assert abs(image_height - focal * POST_HEIGHT / (distance - POST_RADIUS)) <= 1


def test_layouts_stand_on_the_ground_with_fixed_sizes_for_known_classes():
    layout = scene_layouts(range(64))
    objects = layout.present & (layout.label != GROUND)
    torch.testing.assert_close(layout.center[..., 1][objects], layout.size[..., 1][objects])
    for label, size in ((POST, (POST_RADIUS, POST_HEIGHT / 2, POST_RADIUS)), (CRATE, (CRATE_SIZE / 2,) * 3),
                        (CAR, tuple(side / 2 for side in CAR_SIZE))):
        sizes = layout.size[objects & (layout.label == label)]
        assert len(sizes) > 0
        torch.testing.assert_close(sizes, torch.tensor(size, dtype=torch.float64).expand_as(sizes))
    only_posts = scene_layouts(range(16), classes=["post"])
    assert set(only_posts.label[only_posts.present].tolist()) == {GROUND, POST}


def test_renders_cover_at_least_eight_classes():
    labels = render_scenes(range(36), 32, 48).labels
    assert len(CLASS_NAMES) >= 8
    assert len(labels.unique()) >= 8


def test_shadows_darken_the_same_material():
    height, width = 48, 64
    layout = SceneBatch.blank(1)
    layout.sun[0] = torch.nn.functional.normalize(torch.tensor([0.2, 0.6, 0.75], dtype=torch.float64), dim=0)
    slot = BLOCK_SLOTS[0]
    layout.present[0, slot] = True  # a 1.2 m box 6 m ahead, lit from behind: its shadow falls towards us
    layout.center[0, slot] = torch.tensor([0.0, 0.6, 6.0], dtype=torch.float64)
    layout.size[0, slot] = torch.full((3,), 0.6, dtype=torch.float64)
    scene = render_layouts(layout, height, width)
    layout.present[0, slot] = False
    open_ground = render_layouts(layout, height, width).image[0]
    ambient, albedo = layout.ambient[0].item(), layout.color[0, 0, 0].item()
    lit_value = (albedo * (ambient + (1 - ambient) * layout.sun[0, 1].item())) ** (1 / 2.2)
    shadow_value = (albedo * ambient) ** (1 / 2.2)
    in_shadow = ((scene.image[0, 0] - shadow_value).abs() < 1e-5) & (scene.labels[0] == GROUND)
    assert in_shadow.sum() >= 10
    torch.testing.assert_close(open_ground[0][in_shadow], torch.full((int(in_shadow.sum()),), lit_value))
    assert shadow_value < lit_value


@needs_datasets
def test_splits_are_disjoint_and_refuse_to_overflow():
    names = list(SPLITS)
    assert {"train", "search", "test"} <= set(names)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = SPLITS[first], SPLITS[second]
            assert a.stop <= b.start or b.stop <= a.start, (first, second)
    assert list(split_seeds("search", 3, offset=2)) == [10**9 + 2, 10**9 + 3, 10**9 + 4]
    assert split_seeds("test", 5, offset=len(SPLITS["test"]) - 5)[-1] == SPLITS["test"][-1]
    with pytest.raises(ValueError, match="count"):
        split_seeds("test", 6, offset=len(SPLITS["test"]) - 5)
    with pytest.raises(ValueError, match="count"):
        split_seeds("train", 0)
    with pytest.raises(ValueError, match="split"):
        split_seeds("validation", 4)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        (dict(height=31, width=48), "height"),
        (dict(height=0, width=48), "height"),
        (dict(height=-32, width=48), "height"),
        (dict(height=32, width=47), "width"),
        (dict(height=32, width=48, chunk_size=0), "chunk_size"),
        (dict(height=32, width=48, classes=[]), "classes"),
        (dict(height=32, width=48, classes=["sky", "ground"]), "classes"),
        (dict(height=32, width=48, classes=["unicorn"]), "classes"),
    ],
)
def test_impossible_options_are_refused_by_name(options, name):
    with pytest.raises(ValueError, match=name):
        check_render_options(**options)
    with pytest.raises(ValueError, match=name):
        render_scenes([0], **options)


@needs_datasets
def test_other_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="seeds"):
        render_scenes([], 32, 48)
    with pytest.raises(ValueError, match="count"):
        SceneBatch.blank(0)
    with pytest.raises(ValueError, match="start_index"):
        RenderedBatches("test", 4, 32, 48, start_index=len(SPLITS["test"]) // 4)
    with pytest.raises(ValueError, match="count"):
        render_dataset("search", 0, 32, 48)
    with pytest.raises(ValueError, match="split"):
        RenderedBatches("holdout", 4, 32, 48)


@needs_datasets
def test_the_dataset_export_has_the_columns_of_scene_dataset():
    dataset = render_dataset("test", 3, 16, 24, offset=5)
    assert dataset.features == datasets.Features({
        "image": datasets.Image(),
        "depth": datasets.Array2D((16, 24), "float32"),
        "labels": datasets.Array2D((16, 24), "uint8"),
        "seed": datasets.Value("int64"),
    })
    rows = dataset.with_format("numpy", columns=["depth", "labels", "seed"], output_all_columns=True)[:]
    seeds = split_seeds("test", 3, offset=5)
    assert rows["seed"].tolist() == list(seeds)
    scenes = render_scenes(seeds, 16, 24)
    np.testing.assert_array_equal(rows["depth"], scenes.depth.numpy())
    np.testing.assert_array_equal(rows["labels"], scenes.labels.numpy())
    assert dataset[0]["image"].size == (24, 16)


@needs_datasets
def test_a_stream_of_batches_resumes_exactly():
    stream = RenderedBatches("train", 2, 16, 24, offset=7)
    first = [batch for _, batch in zip(range(3), stream, strict=False)]
    resumed = next(iter(RenderedBatches("train", 2, 16, 24, start_index=2, offset=7)))
    for name, values in first[2].items():
        assert torch.equal(values, resumed[name]), name
    assert resumed["seeds"].tolist() == list(split_seeds("train", 2, offset=11))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = render_scenes(split_seeds("train", 2, offset=11), 16, 24).image
    torch.testing.assert_close(resumed["pixel_values"] * std + mean, images)


@needs_datasets
def test_the_trainer_streams_rendered_batches_and_resumes(tmp_path):
    config = TrainConfig(teacher="unused", output_dir=str(tmp_path), data="render:train:6", image_size=16,
                         batch_size=2, num_workers=0, seed=3)
    loader = build_rendered_loader(config, patch_size=8, device=torch.device("cpu"))
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["pixel_values"].shape == (2, 3, 16, 16)
    seeds = torch.cat([batch["seeds"] for batch in batches]).sort().values
    assert seeds.tolist() == list(split_seeds("train", 6, offset=6))  # epoch 1: new scenes
    resumed = next(iter(skip_first_batches(loader, 2)))
    assert torch.equal(resumed["pixel_values"], batches[2]["pixel_values"])
    for data in ("render:test", "render:train:0", "render:train:many"):
        with pytest.raises(ValueError, match="render:train"):
            build_rendered_loader(TrainConfig(teacher="x", output_dir=str(tmp_path), data=data), 8, torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_renders_agree_with_the_cpu():
    seeds = range(6)
    cpu = render_scenes(seeds, 64, 96)
    for compiled in (False, True):
        cuda = render_scenes(seeds, 64, 96, device="cuda", compiled=compiled)
        same = cuda.labels.cpu() == cpu.labels
        assert same.float().mean() > 0.999
        torch.testing.assert_close(cuda.depth.cpu()[same], cpu.depth[same], rtol=1e-5, atol=0)
        assert (cuda.image.cpu() - cpu.image).abs()[same.unsqueeze(1).expand_as(cpu.image)].max() < 1e-3
