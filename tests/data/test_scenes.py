"""Procedural scenes: depth and labels against analytic ray intersections, shading against closed forms, determinism."""

import time

import numpy as np
import pytest

from jetvit_hf.data.images import find_image_column, load_images
from jetvit_hf.data.scenes import (
    BOX,
    CLASS_NAMES,
    GROUND,
    SKY,
    SPHERE,
    WALL,
    Box,
    Camera,
    Light,
    Material,
    Plane,
    SceneLayout,
    Sphere,
    render,
    render_scene,
    scene_dataset,
)



def reference_rays(camera: Camera, height: int, width: int):
    """Origin and per-pixel ray directions with unit forward component (so the ray parameter is planar depth), from
    the documented conventions: K for pixel centres, pitch up then yaw right."""
    k = camera.intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width] + 0.5
    x, y = (u - k[0, 2]) / k[0, 0], -(v - k[1, 2]) / k[1, 1]
    yaw, pitch = np.radians(camera.yaw), np.radians(camera.pitch)
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.cross(forward, right)
    return np.array(camera.position, dtype=np.float64), x[..., None] * right + y[..., None] * up + forward


def gamma_encode(linear) -> np.ndarray:
    return np.round(np.clip(np.asarray(linear, dtype=np.float64), 0, 1) ** (1 / 2.2) * 255)


def test_fronto_parallel_plane_has_exact_depth_everywhere():
    layout = SceneLayout(
        camera=Camera(position=(0.0, 0.0, 0.0), fov=70.0),
        shapes=(Plane(center=(0.0, 0.0, 3.7), normal=(0.0, 0.0, -1.0), label=WALL),),
    )
    scene = render(layout, 33, 47)
    assert scene.depth.dtype == np.float32 and scene.depth.shape == (33, 47)
    assert scene.labels.dtype == np.uint8 and (scene.labels == WALL).all()
    np.testing.assert_allclose(scene.depth, 3.7, atol=1e-4, rtol=0)


def test_sphere_depth_and_labels_match_the_analytic_intersection():
    camera = Camera(position=(0.0, 0.0, 0.0), fov=60.0)
    center, radius = np.array([0.6, -0.3, 5.0]), 1.1
    layout = SceneLayout(
        camera=camera,
        shapes=(
            Sphere(center=tuple(center), radius=radius),
            Plane(center=(0.0, 0.0, 9.0), normal=(0.0, 0.0, -1.0), label=WALL),
        ),
    )
    height, width = 48, 64
    scene = render(layout, height, width)

    origin, rays = reference_rays(camera, height, width)
    # |o + t d - c|^2 = r^2, the nearer root; the ray misses where the discriminant is negative.
    a = (rays * rays).sum(-1)
    b = 2 * (rays * (origin - center)).sum(-1)
    c = ((origin - center) ** 2).sum() - radius**2
    discriminant = b * b - 4 * a * c
    sphere_depth = (-b - np.sqrt(np.maximum(discriminant, 0))) / (2 * a)
    # Distance from the centre to the ray's line, for a margin around the silhouette.
    closest = np.linalg.norm(np.cross(rays, center - origin), axis=-1) / np.linalg.norm(rays, axis=-1)
    inside, outside = closest < radius - 1e-3, closest > radius + 1e-3

    assert inside.sum() > 100 and outside.sum() > 100
    assert (scene.labels[inside] == SPHERE).all()
    assert (scene.labels[outside] == WALL).all()
    np.testing.assert_allclose(scene.depth[inside], sphere_depth[inside], atol=1e-4, rtol=0)
    np.testing.assert_allclose(scene.depth[outside], 9.0, atol=1e-4, rtol=0)


def test_centre_pixel_of_a_sphere_on_the_axis_is_centre_minus_radius():
    layout = SceneLayout(
        camera=Camera(position=(0.0, 0.0, 0.0), fov=50.0), shapes=(Sphere(center=(0.0, 0.0, 4.25), radius=0.75),)
    )
    scene = render(layout, 65, 65)
    assert scene.labels[32, 32] == SPHERE
    assert abs(scene.depth[32, 32] - (4.25 - 0.75)) < 1e-4
    assert scene.labels[0, 0] == SKY and scene.depth[0, 0] == 0


def test_yawed_box_and_ground_match_analytic_intersections_from_a_turned_camera():
    camera = Camera(position=(0.3, 1.4, -0.2), yaw=12.0, pitch=-20.0, fov=65.0)
    center, half_size, yaw = np.array([0.8, 0.5, 4.0]), np.array([0.7, 0.5, 0.4]), 30.0
    layout = SceneLayout(
        camera=camera,
        shapes=(Plane(center=(0.0, 0.0, 0.0)), Box(center=tuple(center), half_size=tuple(half_size), yaw=yaw)),
    )
    height, width = 60, 80
    scene = render(layout, height, width)
    origin, rays = reference_rays(camera, height, width)

    # Ground y = 0.
    ground_depth = np.where(rays[..., 1] < 0, -origin[1] / np.where(rays[..., 1] < 0, rays[..., 1], -1), np.inf)

    # Box: slab test in its frame; yaw turns local z from +z towards +x, like the camera's yaw.
    theta = np.radians(yaw)
    axes = np.array([[np.cos(theta), 0, -np.sin(theta)], [0, 1, 0], [np.sin(theta), 0, np.cos(theta)]])
    local_origin, local_rays = axes @ (origin - center), rays @ axes.T

    def slab_depth(half):
        with np.errstate(divide="ignore"):
            t1, t2 = (-half - local_origin) / local_rays, (half - local_origin) / local_rays
        near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
        return np.where((near <= far) & (near > 0), near, np.inf)

    box_depth = slab_depth(half_size)
    surely_box = np.isfinite(slab_depth(half_size - 1e-3)) & (box_depth < ground_depth - 1e-3)
    surely_ground = ~np.isfinite(slab_depth(half_size + 1e-3)) & (ground_depth < 50)
    surely_sky = (rays[..., 1] > 0) & ~np.isfinite(box_depth)

    assert surely_box.sum() > 100 and surely_ground.sum() > 100 and surely_sky.sum() > 100
    assert (scene.labels[surely_box] == BOX).all()
    assert (scene.labels[surely_ground] == GROUND).all()
    assert (scene.labels[surely_sky] == SKY).all() and (scene.depth[surely_sky] == 0).all()
    np.testing.assert_allclose(scene.depth[surely_box], box_depth[surely_box], atol=1e-4, rtol=0)
    np.testing.assert_allclose(scene.depth[surely_ground], ground_depth[surely_ground], atol=1e-4, rtol=1e-5)


def test_lambertian_shading_and_a_cast_shadow_have_the_closed_form_colours():
    color, ambient = (0.8, 0.5, 0.3), 0.25
    light = (1.0, 0.0, -1.0)  # 45 degrees off the wall's normal (0, 0, -1): n.l = cos 45
    wall = Plane(center=(0.0, 0.0, 6.0), normal=(0.0, 0.0, -1.0), label=WALL, material=Material(color=color))
    blocker = Sphere(center=(0.0, 0.0, 4.0), radius=0.5)
    layout = SceneLayout(Camera(position=(0.0, 0.0, 0.0), fov=60.0), (wall, blocker), Light(light, ambient))
    height = width = 61
    scene = render(layout, height, width)
    image = np.asarray(scene.image).astype(np.float64)

    lit = gamma_encode(np.array(color) * (ambient + (1 - ambient) * np.cos(np.pi / 4)))
    shadowed = gamma_encode(np.array(color) * ambient)
    # The sphere's shadow falls around (-2, 0, 6) (centre + s * (-1, 0, 1) / sqrt 2 at z = 6); the lit probe is on
    # the other side.
    focal = scene.camera.intrinsics(height, width)[0, 0]
    shadow_column, lit_column = round(width / 2 - 0.5 + focal * -2 / 6), round(width / 2 - 0.5 + focal * 2 / 6)
    row = height // 2
    assert scene.labels[row, shadow_column] == WALL and scene.labels[row, lit_column] == WALL
    np.testing.assert_allclose(image[row, shadow_column], shadowed, atol=1)
    np.testing.assert_allclose(image[row, lit_column], lit, atol=1)
    # Without shadows the same pixel is lit.
    unshadowed = np.asarray(render(layout, height, width, shadows=False).image).astype(np.float64)
    np.testing.assert_allclose(unshadowed[row, shadow_column], lit, atol=1)


def test_patterns_mix_the_two_colours():
    camera = Camera(position=(0.0, 0.0, 0.0), fov=60.0)
    facing = Light(direction=(0.0, 0.0, -1.0), ambient=1.0)  # colour == albedo

    def wall_image(**material):
        wall = Plane(center=(0.0, 0.0, 5.0), normal=(0.0, 0.0, -1.0), material=Material(**material))
        return np.asarray(render(SceneLayout(camera, (wall,), facing), 40, 40).image).reshape(-1, 3)

    white, black = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    plain = wall_image(color=(0.2, 0.4, 0.6))
    assert (plain == gamma_encode((0.2, 0.4, 0.6))).all()
    checker = wall_image(color=white, pattern="checker", pattern_color=black, pattern_scale=1.0)
    values, counts = np.unique(checker, axis=0, return_counts=True)
    assert values.tolist() == [[0, 0, 0], [255, 255, 255]] and counts.min() > 0.25 * len(checker)
    noise = wall_image(color=white, pattern="noise", pattern_color=black, pattern_scale=0.5)
    assert len(np.unique(noise[:, 0])) > 50 and noise.std() > 10


def test_random_scenes_are_deterministic_varied_and_consistent():
    first, again, other = render_scene(7, 48, 64), render_scene(7, 48, 64), render_scene(8, 48, 64)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert np.array_equal(first.depth, again.depth) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.depth, other.depth)
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))

    for scene in (first, other):
        image = np.asarray(scene.image)
        assert scene.image.mode == "RGB" and image.shape == (48, 64, 3) and image.std() > 15
        assert len(np.unique(scene.labels)) >= 3 and scene.labels.max() < len(CLASS_NAMES)
        assert ((scene.depth > 0) == (scene.labels != SKY)).all()
        assert np.isfinite(scene.depth).all() and scene.depth.max() < 60
        assert scene.CLASS_NAMES == CLASS_NAMES and len(CLASS_NAMES) <= 10


def test_rendering_128px_takes_under_two_seconds():
    render_scene(0, 16, 16)  # warm-up
    start = time.perf_counter()
    render_scene(1, 128, 128)
    assert time.perf_counter() - start < 2.0


def test_scene_dataset_rows_are_the_rendered_scenes():
    dataset = scene_dataset(3, 24, 32, seed=5)
    assert len(dataset) == 3 and set(dataset.column_names) == {"image", "depth", "labels", "seed"}
    assert load_images(dataset) is dataset and find_image_column(dataset) == "image"
    assert (dataset.features["depth"].dtype, dataset.features["labels"].dtype) == ("float32", "uint8")
    rows = dataset.with_format("numpy")[:]
    assert rows["depth"].shape == rows["labels"].shape == (3, 24, 32)
    for row in dataset:
        scene = render_scene(row["seed"], 24, 32)
        assert np.array_equal(np.asarray(row["image"]), np.asarray(scene.image))
        assert np.array_equal(np.asarray(row["depth"], dtype=np.float32), scene.depth)
        assert np.array_equal(np.asarray(row["labels"], dtype=np.uint8), scene.labels)
    seeds = list(dataset["seed"])
    assert len(set(seeds)) == 3
    assert list(scene_dataset(3, 24, 32, seed=5)["seed"]) == seeds
    assert not set(scene_dataset(3, 24, 32, seed=6)["seed"]) & set(seeds)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Sphere(center=(0, 0, 1), radius=0), "radius must be positive"),
        (lambda: Box(center=(0, 0, 1), half_size=(1, -1, 1)), "half_size must be positive"),
        (lambda: Sphere(center=(0, 0, 1), radius=1, label=12), "label must be a class id"),
        (lambda: Plane(center=(0, 0, 1), normal=(0, 0, 0)), "normal must be non-zero"),
        (lambda: Material(pattern="zebra"), "Unknown pattern"),
        (lambda: Camera(fov=180), "fov must be in"),
        (lambda: render_scene(0, 0, 16), "positive ints"),
        (lambda: render(SceneLayout(Camera(), ()), 8, 8), "at least one shape"),
        (lambda: scene_dataset(0, 8, 8), "num_scenes must be positive"),
    ],
)
def test_bad_input_is_a_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()
