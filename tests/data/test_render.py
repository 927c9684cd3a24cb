"""The batched scene renderer: determinism, batch invariance, depth against closed forms, classes, patterns, shadows,
seed splits, bad input, the datasets export and resumable streams of batches (CPU, tiny images)."""

import math

import numpy as np
import pytest
import torch

from jetvit_hf.data.render import SceneBatch, check_render_options, render_layouts, render_scenes
from jetvit_hf.data.render_layouts import (
    BLOCK_SLOTS,
    BOX,
    CAR,
    CAR_SIZE,
    CHECKER,
    CLASS_NAMES,
    CRATE,
    CRATE_SIZE,
    CYLINDER_SLOTS,
    GROUND,
    POST,
    POST_HEIGHT,
    POST_RADIUS,
    SKY,
    SPHERE,
    SPHERE_SLOTS,
    scene_layouts,
)

try:  # the streams need `datasets`, which a machine kept for GPU tests may lack
    import datasets
    from accelerate.data_loader import skip_first_batches

    from jetvit_hf.data.images import IMAGENET_MEAN, IMAGENET_STD, find_image_column, load_images
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
    assert torch.isfinite(first.depth).all()


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


def test_a_yawed_box_and_a_sphere_match_analytic_intersections_from_a_pitched_camera():
    height, width, camera_height, pitch, fov = 48, 64, 1.5, math.radians(12), math.radians(60)
    box_center, box_half, box_yaw = np.array([-0.9, 0.6, 5.0]), np.array([0.8, 0.6, 0.5]), math.radians(35)
    sphere_center, radius = np.array([1.2, 0.7, 6.5]), 0.7
    layout = SceneBatch.blank(1)
    layout.camera_height[0], layout.pitch[0], layout.fov[0] = camera_height, pitch, fov
    box, sphere = BLOCK_SLOTS[0], SPHERE_SLOTS[0]
    layout.present[0, [box, sphere]] = True
    layout.label[0, box], layout.label[0, sphere] = BOX, SPHERE
    layout.center[0, box], layout.size[0, box] = torch.tensor(box_center), torch.tensor(box_half)
    layout.yaw[0, box] = box_yaw
    layout.center[0, sphere], layout.size[0, sphere] = torch.tensor(sphere_center), torch.tensor([radius] * 3)
    scene = render_layouts(layout, height, width)
    labels, depth = scene.labels[0].numpy(), scene.depth[0].numpy().astype(np.float64)

    # Unit rays in float64 from the documented camera: at (0, h, 0) looking along +z, pitched down; pixel centres.
    origin = np.array([0.0, camera_height, 0.0])
    forward = np.array([0.0, -math.sin(pitch), math.cos(pitch)])
    up = np.array([0.0, math.cos(pitch), math.sin(pitch)])
    focal = height / 2 / math.tan(fov / 2)
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = ((u - width / 2) / focal)[..., None] * np.cross(up, forward) + ((height / 2 - v) / focal)[..., None] * up
    rays += forward
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)  # so a hit's ray parameter is its distance

    with np.errstate(divide="ignore"):
        ground = np.where(rays[..., 1] < 0, -camera_height / rays[..., 1], np.inf)

    def sphere_distance(r):  # |o + t d - c| = r, the nearer root
        q = origin - sphere_center
        b = rays @ q
        discriminant = b * b - (q @ q - r * r)
        return np.where(discriminant >= 0, -b - np.sqrt(np.maximum(discriminant, 0)), np.inf)

    def box_distance(half):  # slabs along the box's axes; yaw turns local x from +x towards -z
        axes = np.array([[math.cos(box_yaw), 0, -math.sin(box_yaw)], [0, 1, 0],
                         [math.sin(box_yaw), 0, math.cos(box_yaw)]])
        local_origin, local_rays = axes @ (origin - box_center), rays @ axes.T
        with np.errstate(divide="ignore"):
            t1, t2 = (-half - local_origin) / local_rays, (half - local_origin) / local_rays
        near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
        return np.where((near <= far) & (near > 0), near, np.inf)

    on_sphere, on_box = sphere_distance(radius), box_distance(box_half)
    grown_sphere, grown_box = sphere_distance(radius + 1e-3), box_distance(box_half + 1e-3)
    surely = {  # a margin of 1 mm around every silhouette
        SPHERE: np.isfinite(sphere_distance(radius - 1e-3)) & (on_sphere < np.minimum(ground, grown_box) - 1e-3),
        BOX: np.isfinite(box_distance(box_half - 1e-3)) & (on_box < np.minimum(ground, grown_sphere) - 1e-3),
        GROUND: np.isfinite(ground) & (ground < np.minimum(grown_sphere, grown_box) - 1e-3),
    }
    sky = ~np.isfinite(np.minimum(np.minimum(ground, grown_sphere), grown_box))
    planar = rays @ forward  # depth per unit distance along each ray
    for label, distance in ((SPHERE, on_sphere), (BOX, on_box), (GROUND, ground)):
        where = surely[label]
        assert where.sum() > 50, CLASS_NAMES[label]
        assert (labels[where] == label).all(), CLASS_NAMES[label]
        np.testing.assert_allclose(depth[where], (distance * planar)[where], rtol=2e-6, atol=0,
                                   err_msg=CLASS_NAMES[label])
    assert sky.sum() > 50 and (labels[sky] == SKY).all() and (depth[sky] == 0).all()


def test_a_checker_has_the_two_colours_in_cells_of_its_scale():
    height, width, cell = 64, 80, 0.5
    layout = SceneBatch.blank(1)
    layout.camera_height[0], layout.ambient[0] = 1.0, 1.0  # no shading: every pixel shows its albedo
    slot = BLOCK_SLOTS[0]
    layout.present[0, slot] = True  # a 3 x 2 m board 3.8 m ahead, facing the camera, its edges on the 0.5 m grid
    layout.center[0, slot] = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    layout.size[0, slot] = torch.tensor([1.5, 1.0, 0.2], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.7, 0.2], [0.1, 0.3, 0.6]], dtype=torch.float64)
    layout.color[0, slot], layout.color2[0, slot] = colors
    layout.pattern[0, slot], layout.scale[0, slot] = CHECKER, cell
    scene = render_layouts(layout, height, width)

    focal = height / 2 / math.tan(math.radians(30))
    v, u = np.mgrid[0:height, 0:width] + 0.5
    x, y = 3.8 * (u - width / 2) / focal, 1.0 + 3.8 * (height / 2 - v) / focal  # where each ray meets the board
    on_board = (np.abs(x) < 1.5 - 1e-3) & (np.abs(y - 1.0) < 1.0 - 1e-3)
    within_a_cell = (np.abs(x / cell - np.round(x / cell)) > 0.02) & (np.abs(y / cell - np.round(y / cell)) > 0.02)
    parity = (np.floor(x / cell) + np.floor(y / cell)) % 2 == 1
    image = scene.image[0].permute(1, 2, 0).double().numpy()
    expected = (colors.numpy() ** (1 / 2.2)).astype(np.float32)
    assert (scene.labels[0].numpy()[on_board] == BOX).all()
    first, second = on_board & within_a_cell & ~parity, on_board & within_a_cell & parity
    assert first.sum() > 100 and second.sum() > 100
    pixels = [image[first], image[second]]
    if abs(pixels[0][0] - expected[1]).max() < 1e-5:  # which colour the first cell gets is the pattern's choice
        pixels.reverse()
    for values, color in zip(pixels, expected, strict=True):
        np.testing.assert_allclose(values, np.broadcast_to(color, values.shape), rtol=0, atol=1e-5)
    ground = scene.labels[0].numpy() == GROUND  # plain: one colour
    np.testing.assert_allclose(image[ground], np.full((ground.sum(), 3), 0.6 ** (1 / 2.2)), rtol=0, atol=1e-5)


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
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        render_scenes([3, -1], 32, 48)
    with pytest.raises(ValueError, match="count"):
        SceneBatch.blank(0)
    with pytest.raises(ValueError, match="start_index"):
        RenderedBatches("test", 4, 32, 48, start_index=len(SPLITS["test"]) // 4)
    with pytest.raises(ValueError, match="count"):
        render_dataset("search", 0, 32, 48)
    with pytest.raises(ValueError, match="split"):
        RenderedBatches("holdout", 4, 32, 48)


@needs_datasets
def test_the_dataset_export_holds_the_rendered_scenes():
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
    pixels = (scenes.image * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in dataset["image"]]), pixels)
    assert load_images(dataset) is dataset and find_image_column(dataset) == "image"


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
