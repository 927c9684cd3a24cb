"""Procedural 3D scenes with exact depth and semantic labels, rendered by sphere tracing signed distance functions.

Offline ground truth for depth and segmentation evaluation, exact where real datasets are unavailable or their labels
are approximate: a ground plane, walls and 3-8 textured primitives, seen by a pinhole camera and lit by one directional
light plus ambient, with soft shadows. Only torch, numpy and PIL are needed (and `datasets` for `scene_dataset`); a
scene is a pure function of its seed.

Conventions:
- World axes: x right, y up, z forward (away from a camera with zero yaw and pitch). Lengths in metres, angles in
  degrees.
- The camera is a pinhole with vertical field of view `fov` and its principal point at the image centre; pixel (i, j)
  looks through its centre (j + 0.5, i + 0.5). `Camera.intrinsics` gives the matching 3x3 matrix.
- `depth` is planar: the z coordinate of the hit point in the camera frame (not the distance along the ray), and 0
  where the ray hits nothing (sky); mask with `depth > 0`.
- `labels` holds one class id per pixel, an index into `CLASS_NAMES`: 0 sky, 1 ground, 2 wall, 3 sphere, 4 box,
  5 cylinder, 6 torus, 7 capsule.

The surface is found by sphere tracing and then polished with Newton steps along the ray, so depth on analytic
surfaces matches the exact ray intersection to ~1e-5 m.
"""

import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

CLASS_NAMES = ("sky", "ground", "wall", "sphere", "box", "cylinder", "torus", "capsule")
SKY, GROUND, WALL, SPHERE, BOX, CYLINDER, TORUS, CAPSULE = range(len(CLASS_NAMES))
PATTERNS = ("plain", "checker", "stripes", "noise")

_FAR = 60.0  # rays that travel this far hit nothing (sky)
_MAX_STEPS = 192
_HIT_TOLERANCE = 1e-4  # sphere tracing stops at distance < _HIT_TOLERANCE * max(t, 1); Newton steps refine it
_NEWTON_STEPS = 4
_NORMAL_EPS = 1e-3
_SHADOW_DISTANCE = 12.0  # occluders farther than this along the light direction cast no shadow
_PATTERN_OFFSET = 0.2371  # keeps pattern cell borders off surfaces that lie on a local coordinate plane


# ----------------------------------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class Material:
    """Albedo `color` mixed with `pattern_color` by a procedural `pattern` with cells of `pattern_scale` metres."""

    color: tuple[float, float, float] = (0.7, 0.7, 0.7)
    pattern: str = "plain"
    pattern_color: tuple[float, float, float] = (0.2, 0.2, 0.2)
    pattern_scale: float = 0.5

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"Unknown pattern {self.pattern!r}; allowed: {list(PATTERNS)}.")
        if self.pattern_scale <= 0:
            raise ValueError(f"pattern_scale must be positive, got {self.pattern_scale}.")


@dataclass(frozen=True, kw_only=True)
class Shape:
    """A primitive placed at `center`, turned by `tilt` degrees about x and then `yaw` degrees about y."""

    center: tuple[float, float, float]
    yaw: float = 0.0
    tilt: float = 0.0
    material: Material = field(default_factory=Material)
    label: int

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if not 0 <= self.label < len(CLASS_NAMES):
            raise ValueError(f"label must be a class id in [0, {len(CLASS_NAMES)}), got {self.label}.")
        for name in self.SIZE_FIELDS:
            value = getattr(self, name)
            if min(np.atleast_1d(value)) <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be positive, got {value}.")

    def rotation(self) -> np.ndarray:
        """The 3x3 matrix whose columns are the shape's local x, y, z axes in world coordinates."""
        return _rotation_y(self.yaw) @ _rotation_x(self.tilt)


@dataclass(frozen=True, kw_only=True)
class Plane(Shape):
    """The infinite plane through `center` with unit normal `normal` (its local y axis)."""

    normal: tuple[float, float, float] = (0.0, 1.0, 0.0)
    label: int = GROUND

    def __post_init__(self):
        super().__post_init__()
        if np.linalg.norm(self.normal) == 0:
            raise ValueError("A plane's normal must be non-zero.")

    def rotation(self) -> np.ndarray:
        normal = np.asarray(self.normal, dtype=np.float64)
        normal = normal / np.linalg.norm(normal)
        # The ground (normal +y) gets the identity frame.
        helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        tangent = np.cross(normal, helper)
        tangent /= np.linalg.norm(tangent)
        return np.stack([tangent, normal, np.cross(tangent, normal)], axis=1)


@dataclass(frozen=True, kw_only=True)
class Sphere(Shape):
    radius: float
    label: int = SPHERE

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("radius",)


@dataclass(frozen=True, kw_only=True)
class Box(Shape):
    half_size: tuple[float, float, float]
    label: int = BOX

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("half_size",)


@dataclass(frozen=True, kw_only=True)
class Cylinder(Shape):
    """A capped cylinder along the local y axis."""

    radius: float
    half_height: float
    label: int = CYLINDER

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("radius", "half_height")


@dataclass(frozen=True, kw_only=True)
class Torus(Shape):
    """A ring in the local xz plane: tube of `minor_radius` around a circle of `major_radius`."""

    major_radius: float
    minor_radius: float
    label: int = TORUS

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("major_radius", "minor_radius")


@dataclass(frozen=True, kw_only=True)
class Capsule(Shape):
    """A segment from -`half_length` to `half_length` along the local y axis, thickened by `radius`."""

    radius: float
    half_length: float
    label: int = CAPSULE

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("radius", "half_length")


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at `position`, turned `pitch` degrees up and then `yaw` degrees right; vertical FOV `fov`."""

    position: tuple[float, float, float] = (0.0, 1.5, 0.0)
    yaw: float = 0.0
    pitch: float = 0.0
    fov: float = 60.0

    def __post_init__(self):
        if not 0 < self.fov < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {self.fov}.")

    def rotation(self) -> np.ndarray:
        """The 3x3 matrix whose columns are the camera's right, up and forward axes in world coordinates."""
        return _rotation_y(self.yaw) @ _rotation_x(-self.pitch)

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """The 3x3 pinhole matrix K mapping camera coordinates (x right, y down, z forward) to pixel coordinates."""
        focal = height / 2 / math.tan(math.radians(self.fov) / 2)
        return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Light:
    """A directional light shining from `direction` (towards the light; normalised when used), plus `ambient`."""

    direction: tuple[float, float, float] = (0.3, 1.0, -0.5)
    ambient: float = 0.3


@dataclass(frozen=True)
class SceneLayout:
    camera: Camera
    shapes: tuple[Shape, ...]
    light: Light = field(default_factory=Light)


@dataclass
class Scene:
    """A rendered scene: RGB image, planar depth in metres (0 = sky) and class ids into `CLASS_NAMES`."""

    image: Image.Image
    depth: np.ndarray
    labels: np.ndarray
    camera: Camera

    CLASS_NAMES: ClassVar[tuple[str, ...]] = CLASS_NAMES


def _rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# ----------------------------------------------------------------------------------------------------------------------
# Signed distances


# Each takes the shapes' local coordinates x, y, z ([k, N] each) and returns [k, N] signed distances.


def _column(shapes, name: str) -> torch.Tensor:
    return torch.tensor([getattr(s, name) for s in shapes], dtype=torch.float32).view(-1, 1)


def _plane_distance(x, y, z, shapes) -> torch.Tensor:
    return y


def _sphere_distance(x, y, z, shapes) -> torch.Tensor:
    return torch.sqrt(x * x + y * y + z * z) - _column(shapes, "radius")


def _box_distance(x, y, z, shapes) -> torch.Tensor:
    half_size = torch.tensor([s.half_size for s in shapes], dtype=torch.float32)
    ex, ey, ez = (coordinate.abs() - half_size[:, i : i + 1] for i, coordinate in enumerate((x, y, z)))
    outside = torch.sqrt(ex.clamp(min=0) ** 2 + ey.clamp(min=0) ** 2 + ez.clamp(min=0) ** 2)
    return outside + torch.maximum(torch.maximum(ex, ey), ez).clamp(max=0)


def _cylinder_distance(x, y, z, shapes) -> torch.Tensor:
    radial = torch.hypot(x, z) - _column(shapes, "radius")
    axial = y.abs() - _column(shapes, "half_height")
    return torch.hypot(radial.clamp(min=0), axial.clamp(min=0)) + torch.maximum(radial, axial).clamp(max=0)


def _torus_distance(x, y, z, shapes) -> torch.Tensor:
    return torch.hypot(torch.hypot(x, z) - _column(shapes, "major_radius"), y) - _column(shapes, "minor_radius")


def _capsule_distance(x, y, z, shapes) -> torch.Tensor:
    half_length = _column(shapes, "half_length")
    along = y - torch.minimum(torch.maximum(y, -half_length), half_length)
    return torch.sqrt(x * x + along * along + z * z) - _column(shapes, "radius")


_DISTANCES = {
    Plane: _plane_distance,
    Sphere: _sphere_distance,
    Box: _box_distance,
    Cylinder: _cylinder_distance,
    Torus: _torus_distance,
    Capsule: _capsule_distance,
}


@dataclass(frozen=True)
class _ShapeGroup:
    """The shapes of one type: their distance function, positions in the scene, centres and world-to-local maps."""

    distance: Callable[..., torch.Tensor]
    shapes: list[Shape]
    indices: torch.Tensor
    centers: torch.Tensor  # [k, 3, 1]
    to_local: torch.Tensor | None  # [k, 3, 3], or None when every shape of the group is axis-aligned

    def local(self, points_t: torch.Tensor) -> torch.Tensor:
        """[3, N] world points -> [k, 3, N] local coordinates."""
        offset = points_t.unsqueeze(0) - self.centers
        if self.to_local is None:
            return offset
        # Written out: a batched 3x3 matmul over [k, 3, N] is several times slower on CPU.
        m = self.to_local
        x, y, z = offset[:, 0], offset[:, 1], offset[:, 2]
        rows = [m[:, i, 0:1] * x + m[:, i, 1:2] * y + m[:, i, 2:3] * z for i in range(3)]
        return torch.stack(rows, dim=1)


class _Geometry:
    """The scene's shapes as batched tensors: local coordinates and signed distances of many points at once."""

    def __init__(self, shapes: tuple[Shape, ...]):
        if not shapes:
            raise ValueError("A scene needs at least one shape.")
        unknown = {type(s).__name__ for s in shapes if type(s) not in _DISTANCES}
        if unknown:
            raise ValueError(f"Unknown shape type(s) {sorted(unknown)}; known: {[t.__name__ for t in _DISTANCES]}.")
        self.num_shapes = len(shapes)
        self.groups = []
        for kind, distance in _DISTANCES.items():
            members = [i for i, s in enumerate(shapes) if type(s) is kind]
            if not members:
                continue
            to_local = np.stack([shapes[i].rotation().T for i in members])
            self.groups.append(
                _ShapeGroup(
                    distance=distance,
                    shapes=[shapes[i] for i in members],
                    indices=torch.tensor(members),
                    centers=torch.tensor([shapes[i].center for i in members], dtype=torch.float32).unsqueeze(2),
                    to_local=None if np.allclose(to_local, np.eye(3)) else torch.tensor(to_local, dtype=torch.float32),
                )
            )

    def local(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] world points -> [P, 3, N] coordinates in each shape's frame (component-major)."""
        local = torch.empty(self.num_shapes, 3, points.shape[0])
        for group in self.groups:
            local[group.indices] = group.local(points.T)
        return local

    def distances(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] world points -> [P, N] signed distance to each shape."""
        distances = torch.empty(self.num_shapes, points.shape[0])
        for group in self.groups:
            local = group.local(points.T)
            distances[group.indices] = group.distance(local[:, 0], local[:, 1], local[:, 2], group.shapes)
        return distances

    def distance(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] -> [N] signed distance to the union of the shapes."""
        return self.distances(points).amin(dim=0)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """[N, 3] -> [N, 3] unit gradient of the union's distance (tetrahedral central differences)."""
        offsets = _NORMAL_EPS * torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
        samples = self.distance((points.unsqueeze(0) + offsets.unsqueeze(1)).reshape(-1, 3)).view(4, -1)
        gradient = (offsets.unsqueeze(1) * samples.unsqueeze(-1)).sum(dim=0)
        return torch.nn.functional.normalize(gradient, dim=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def _camera_rays(camera: Camera, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit world-space ray directions [H*W, 3] and each ray's forward component (depth = t * forward)."""
    tan_half = math.tan(math.radians(camera.fov) / 2)
    x = ((torch.arange(width, dtype=torch.float64) + 0.5) * 2 / width - 1) * tan_half * width / height
    y = (1 - (torch.arange(height, dtype=torch.float64) + 0.5) * 2 / height) * tan_half
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    directions = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    world = directions @ torch.from_numpy(camera.rotation()).T
    return world.float(), directions[:, 2].float()


def _sphere_trace(geometry: _Geometry, origin: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Distance along each ray to the first surface, or a value >= _FAR where there is none."""
    t = torch.zeros(directions.shape[0])
    active = torch.arange(directions.shape[0])
    for _ in range(_MAX_STEPS):
        distance = geometry.distance(origin + t[active, None] * directions[active])
        t[active] += distance
        still = (distance >= _HIT_TOLERANCE * t[active].clamp(min=1)) & (t[active] < _FAR)
        active = active[still]
        if active.numel() == 0:
            break
    return t


def _newton_refine(geometry: _Geometry, origin, directions, t: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Newton steps on f(t) = distance(origin + t * direction) from sphere-traced hits (`normals` at those points).

    A step is kept only where it brings the point closer to the surface, and a ray stops refining at its first step
    that does not. One step is exact for planes; curved surfaces converge quadratically, also at grazing incidence.
    """
    t = t.clone()
    active = torch.arange(t.shape[0])
    for _ in range(_NEWTON_STEPS):
        points = origin + t[active, None] * directions[active]
        distance = geometry.distance(points)
        slope = (normals * directions[active]).sum(dim=-1)
        refined = t[active] + torch.where(slope < -1e-3, -distance / slope, torch.zeros_like(distance))
        better = geometry.distance(origin + refined[:, None] * directions[active]).abs() < distance.abs()
        t[active] = torch.where(better, refined, t[active])
        active = active[better]
        if active.numel() == 0:
            break
        normals = geometry.normals(origin + t[active, None] * directions[active])
    return t


def _soft_shadow(geometry: _Geometry, points: torch.Tensor, light: torch.Tensor, steps: int = 48) -> torch.Tensor:
    """1 where the light is unoccluded, falling to 0 in shadow, with penumbrae (Quilez's sphere-traced soft shadows)."""
    shade = torch.ones(points.shape[0])
    t = torch.full((points.shape[0],), 0.02)
    active = torch.arange(points.shape[0])
    for _ in range(steps):
        distance = geometry.distance(points[active] + t[active, None] * light)
        shade[active] = torch.minimum(shade[active], (8 * distance / t[active]).clamp(min=0))
        t[active] += distance.clamp(0.02, 2.0)
        active = active[(shade[active] > 1e-3) & (t[active] < _SHADOW_DISTANCE)]
        if active.numel() == 0:
            break
    return shade


def _hash_lattice(cells: torch.Tensor) -> torch.Tensor:
    """[..., 3] int64 lattice points -> [...] pseudo-random values in [0, 1] (integer hash: exact on every machine)."""
    # Kept below 2**32 before each multiplication, so no int64 product overflows.
    h = (cells[..., 0] * 73856093 ^ cells[..., 1] * 19349663 ^ cells[..., 2] * 83492791) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).float() / 0xFFFF


def _value_noise(points: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1] at [N, 3] points (trilinear over a hashed integer lattice)."""
    base = torch.floor(points)
    fraction = points - base
    weight = fraction * fraction * (3 - 2 * fraction)
    base = base.long()
    total = torch.zeros(points.shape[0])
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        corner_weight = torch.where(offset.bool(), weight, 1 - weight).prod(dim=-1)
        total += corner_weight * _hash_lattice(base + offset)
    return total


def _pattern_mix(pattern: str, local: torch.Tensor, scale: float) -> torch.Tensor:
    """How much of the pattern colour each point of [N, 3] local coordinates gets, in [0, 1]."""
    cells = local / scale + _PATTERN_OFFSET
    if pattern == "checker":
        return (torch.floor(cells).long().sum(dim=-1) % 2).float()
    if pattern == "stripes":
        return (torch.floor(cells.sum(dim=-1)).long() % 2).float()
    if pattern == "noise":
        return 0.65 * _value_noise(cells) + 0.35 * _value_noise(2.7 * cells + 17.0)
    return torch.zeros(local.shape[0])


def _albedo(shapes: tuple[Shape, ...], index: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """[N, 3] surface colour of the hit points; `index` is the hit shape, `local` the point in its frame."""
    albedo = torch.empty(index.shape[0], 3)
    for i, shape in enumerate(shapes):
        hit = index == i
        if hit.any():
            material = shape.material
            mix = _pattern_mix(material.pattern, local[hit], material.pattern_scale).unsqueeze(-1)
            color, pattern_color = torch.tensor(material.color), torch.tensor(material.pattern_color)
            albedo[hit] = (1 - mix) * color + mix * pattern_color
    return albedo


def _sky(directions: torch.Tensor) -> torch.Tensor:
    elevation = directions[:, 1:2].clamp(0, 1)
    horizon, zenith = torch.tensor([0.85, 0.9, 0.95]), torch.tensor([0.35, 0.55, 0.9])
    return (1 - elevation) * horizon + elevation * zenith


@contextlib.contextmanager
def _single_threaded():
    """Run torch ops on one intra-op thread, then restore the setting.

    Rendering is a long stream of small ops, for which OpenMP threads cost more than they give (on a busy 2-core
    machine, ten times more); parallelise across scenes instead (`scene_dataset(num_proc=...)`).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render(layout: SceneLayout, height: int, width: int, shadows: bool = True) -> Scene:
    """Render `layout` at `height` x `width` pixels: image, exact planar depth and class labels.

    Runs single-threaded (torch's intra-op thread count is set to 1 for the call and restored after).
    """
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"height and width must be positive ints, got {height!r} x {width!r}.")
    with _single_threaded():
        return _render(layout, height, width, shadows)


def _render(layout: SceneLayout, height: int, width: int, shadows: bool) -> Scene:
    geometry = _Geometry(tuple(layout.shapes))
    origin = torch.tensor(layout.camera.position, dtype=torch.float32)
    directions, forward = _camera_rays(layout.camera, height, width)

    t = _sphere_trace(geometry, origin, directions)
    hit = t < _FAR
    hit_rays = hit.nonzero().squeeze(1)
    hit_directions = directions[hit_rays]
    normals = geometry.normals(origin + t[hit_rays, None] * hit_directions)
    t_hit = _newton_refine(geometry, origin, hit_directions, t[hit_rays], normals)
    points = origin + t_hit[:, None] * hit_directions
    index = geometry.distances(points).argmin(dim=0)
    local = geometry.local(points)[index, :, torch.arange(index.shape[0])]

    light = torch.nn.functional.normalize(torch.tensor(layout.light.direction, dtype=torch.float32), dim=0)
    lit = (normals @ light).clamp(min=0)
    if shadows:
        lit = lit * _soft_shadow(geometry, points + 2e-3 * normals, light)
    ambient = layout.light.ambient
    color = _sky(directions)
    color[hit_rays] = _albedo(tuple(layout.shapes), index, local) * (ambient + (1 - ambient) * lit).unsqueeze(-1)
    pixels = (color.clamp(0, 1) ** (1 / 2.2) * 255).round().to(torch.uint8).view(height, width, 3)

    depth = torch.zeros(height * width)
    depth[hit_rays] = t_hit * forward[hit_rays]
    labels = torch.full((height * width,), SKY, dtype=torch.uint8)
    labels[hit_rays] = torch.tensor([s.label for s in layout.shapes], dtype=torch.uint8)[index]
    return Scene(
        image=Image.fromarray(pixels.numpy()),
        depth=depth.view(height, width).numpy(),
        labels=labels.view(height, width).numpy(),
        camera=layout.camera,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Random scenes


def _random_color(rng: np.random.Generator, saturation=(0.3, 0.9), value=(0.4, 1.0)) -> tuple[float, float, float]:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    channel = [(n + hue * 6) % 6 for n in (5, 3, 1)]
    return tuple(float(val - val * sat * max(0.0, min(k, 4 - k, 1.0))) for k in channel)


def _random_material(rng: np.random.Generator, scale: tuple[float, float], **color_range) -> Material:
    color = _random_color(rng, **color_range)
    if rng.uniform() < 0.5:
        pattern_color = tuple(c * float(rng.uniform(0.25, 0.6)) for c in color)
    else:
        pattern_color = _random_color(rng, **color_range)
    return Material(
        color=color,
        pattern=str(rng.choice(["checker", "stripes", "noise"])),
        pattern_color=pattern_color,
        pattern_scale=float(rng.uniform(*scale)),
    )


def _random_object(rng: np.random.Generator, position: tuple[float, float], floating: float) -> Shape:
    """A random primitive over ground point `position` (x, z), resting on the ground `floating` metres up."""
    size = float(rng.uniform(0.25, 0.8))
    material = _random_material(rng, scale=(0.08, 0.35))
    kind = int(rng.integers(SPHERE, CAPSULE + 1))
    yaw = float(rng.uniform(0, 180))
    x, z = position
    if kind == SPHERE:
        return Sphere(center=(x, floating + size, z), radius=size, material=material)
    if kind == BOX:
        half_size = tuple(float(size * rng.uniform(0.6, 1.3)) for _ in range(3))
        return Box(center=(x, floating + half_size[1], z), half_size=half_size, yaw=yaw, material=material)
    if kind == CYLINDER:
        radius, half_height = size * float(rng.uniform(0.5, 1.0)), size * float(rng.uniform(0.6, 1.6))
        return Cylinder(
            center=(x, floating + half_height, z), radius=radius, half_height=half_height, material=material
        )
    if kind == TORUS:
        minor, tilt = size * float(rng.uniform(0.2, 0.4)), float(rng.uniform(0, 90))
        lowest = size * math.sin(math.radians(tilt)) + minor
        return Torus(
            center=(x, floating + lowest, z), major_radius=size, minor_radius=minor, yaw=yaw, tilt=tilt,
            material=material,
        )
    radius, half_length = size * float(rng.uniform(0.3, 0.6)), size * float(rng.uniform(0.5, 1.2))
    tilt = float(rng.uniform(0, 90))
    lowest = half_length * math.cos(math.radians(tilt)) + radius
    return Capsule(
        center=(x, floating + lowest, z), radius=radius, half_length=half_length, yaw=yaw, tilt=tilt,
        material=material,
    )


def random_layout(seed: int) -> SceneLayout:
    """A random room: ground, a back wall (and sometimes side walls), 3-8 textured primitives, camera and light."""
    rng = np.random.default_rng(seed)
    camera = Camera(
        position=(0.0, float(rng.uniform(1.2, 1.8)), 0.0),
        yaw=float(rng.uniform(-15, 15)),
        pitch=float(rng.uniform(-18, -4)),
        fov=float(rng.uniform(50, 70)),
    )
    back, wall_height = float(rng.uniform(7, 12)), float(rng.uniform(2.5, 4.5))
    wall_color = dict(saturation=(0.05, 0.35), value=(0.55, 0.95))
    shapes = [
        Plane(center=(0.0, 0.0, 0.0), material=_random_material(rng, scale=(0.3, 1.0))),
        Box(
            center=(0.0, wall_height / 2, back + 0.1), half_size=(25.0, wall_height / 2, 0.1), label=WALL,
            material=_random_material(rng, scale=(0.2, 0.8), **wall_color),
        ),
    ]
    for side in (-1, 1):
        if rng.uniform() < 0.5:
            shapes.append(
                Box(
                    center=(side * float(rng.uniform(3.5, 6.0)), wall_height / 2, back / 2),
                    half_size=(0.1, wall_height / 2, back / 2 + 0.2), label=WALL,
                    material=_random_material(rng, scale=(0.2, 0.8), **wall_color),
                )
            )
    for _ in range(int(rng.integers(3, 9))):
        z = float(rng.uniform(2.5, back - 1.0))
        x = float(rng.uniform(-0.8, 0.8)) * z * math.tan(math.radians(camera.fov / 2))
        floating = float(rng.uniform(0.2, 1.2)) if rng.uniform() < 0.25 else 0.0
        shapes.append(_random_object(rng, (x, z), floating))
    elevation, azimuth = math.radians(rng.uniform(25, 70)), math.radians(rng.uniform(-180, 180))
    light = Light(
        direction=(
            math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)
        ),
        ambient=float(rng.uniform(0.2, 0.4)),
    )
    return SceneLayout(camera=camera, shapes=tuple(shapes), light=light)


def render_scene(seed: int, height: int, width: int, shadows: bool = True) -> Scene:
    """The random scene of `seed` (`random_layout(seed)`) rendered at `height` x `width`."""
    return render(random_layout(seed), height, width, shadows=shadows)


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene `index` in `scene_dataset(..., seed=seed)`: a 63-bit mix of both."""
    low, high = np.random.SeedSequence((seed, index)).generate_state(2, dtype=np.uint32)
    return (int(high) << 32 | int(low)) >> 1


def _cache_key(*arguments) -> str:
    source = Path(__file__).read_bytes()
    digest = hashlib.sha256(source + repr((torch.__version__, arguments)).encode()).hexdigest()
    return f"jetvit-scenes-{digest[:24]}"


def _generate_scenes(seeds: list[int], height: int, width: int):
    for seed in seeds:
        scene = render_scene(seed, height, width)
        yield {"image": scene.image, "depth": scene.depth, "labels": scene.labels, "seed": seed}


def scene_dataset(num_scenes: int, height: int, width: int, seed: int = 0, num_proc: int | None = None):
    """A `datasets.Dataset` of `num_scenes` random scenes: `image` (Image), `depth` (float32 [H, W] array, metres,
    0 = sky), `labels` (uint8 [H, W] array of `CLASS_NAMES` ids) and `seed` (re-render a row with `render_scene`).

    Row `i` is `render_scene(scene_seed(seed, i), height, width)`; `num_proc` renders in that many processes. The
    result is cached in the datasets cache under a key made of these arguments, the torch version and a hash of this
    module's source, so a changed renderer never serves stale scenes. Needs `datasets` (the rest of this module
    does not).
    """
    import datasets

    if num_scenes <= 0:
        raise ValueError(f"num_scenes must be positive, got {num_scenes}.")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"height and width must be positive ints, got {height!r} x {width!r}.")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "depth": datasets.Array2D((height, width), "float32"),
            "labels": datasets.Array2D((height, width), "uint8"),
            "seed": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_generator(
        _generate_scenes,
        features=features,
        gen_kwargs={"seeds": [scene_seed(seed, i) for i in range(num_scenes)], "height": height, "width": width},
        num_proc=num_proc,
        fingerprint=_cache_key(num_scenes, height, width, seed),
    )
