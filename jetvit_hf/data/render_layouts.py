"""Random layouts for the batched scene renderer (`jetvit_hf.data.render`): a pure function of each scene's seed.

A layout is a `SceneBatch` of CPU tensors with one row per scene and a fixed number of object slots per scene; a slot
not used by a scene has `present` False. Slot 0 is the ground plane, the other slots have fixed kinds (`SLOT_KINDS`):
boxes turned about the vertical axis, spheres and vertical capped cylinders. Every object rests on the ground.

The layout of scene `seed` comes from `torch.rand(DRAWS, generator=torch.Generator().manual_seed(seed))` alone, so a
scene is the same on every device and in every batch. Conventions: world axes x right, y up, z forward; the camera
stands at (0, camera_height, 0) looking along +z, `pitch` radians down (negative: up); metres and radians.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

CLASS_NAMES = ("sky", "ground", "wall", "slab", "box", "sphere", "cylinder", "post", "crate", "car")
SKY, GROUND, WALL, SLAB, BOX, SPHERE, CYLINDER, POST, CRATE, CAR = range(len(CLASS_NAMES))
OBJECT_CLASSES = CLASS_NAMES[WALL:]

# Classes of fixed physical size, so their image size gives their distance.
POST_RADIUS, POST_HEIGHT = 0.1, 2.0
CRATE_SIZE = 1.0  # a cube
CAR_SIZE = (4.4, 1.5, 1.8)  # length (local x), height, width (local z)

KIND_GROUND, KIND_BOX, KIND_SPHERE, KIND_CYLINDER = range(4)
WALL_SLOTS, SLAB_SLOT, BLOCK_SLOTS = range(1, 4), 4, range(5, 9)  # boxes: walls, one slab, boxes / crates / cars
SPHERE_SLOTS, CYLINDER_SLOTS = range(9, 12), range(12, 16)  # cylinders and posts
SLOT_KINDS = (KIND_GROUND,) + (KIND_BOX,) * 8 + (KIND_SPHERE,) * 3 + (KIND_CYLINDER,) * 4
NUM_SLOTS = len(SLOT_KINDS)

PATTERNS = ("plain", "checker", "stripes", "noise", "image")
PLAIN, CHECKER, STRIPES, NOISE, IMAGE = range(len(PATTERNS))
# scikit-image's bundled photos, and whether each is in colour (grey ones are tinted by the material colour).
TEXTURES = (
    ("astronaut", True), ("coffee", True), ("chelsea", True), ("rocket", True),
    ("brick", False), ("grass", False), ("gravel", False), ("moon", False), ("camera", False),
)

DRAWS = 384  # uniforms drawn per scene; the layout uses a fixed prefix of them
_OBJECT_AZIMUTH = math.radians(40)  # objects stand within this angle of the camera's forward axis


@dataclass
class SceneBatch:
    """The layouts of B scenes (CPU tensors; S = `NUM_SLOTS` object slots per scene, slot 0 the ground).

    `size` holds half extents: (x, y, z) for boxes, the radius for spheres, (radius, half height, radius) for
    cylinders. `yaw` turns an object about the vertical axis (local x towards -z for positive yaw). Materials mix
    `color` and `color2` by `pattern` (`PATTERNS`) in cells of `scale` metres, shifted by `phase` cells; the image
    pattern multiplies `color` by photo `texture` (an index into `TEXTURES`), one photo per
    4 * `scale` metres. `sky` holds the horizon and zenith colours, `sun` the unit direction towards the sun.
    """

    seeds: torch.Tensor  # [B] int64
    camera_height: torch.Tensor  # [B]
    pitch: torch.Tensor  # [B], radians down
    fov: torch.Tensor  # [B], vertical field of view, radians
    sun: torch.Tensor  # [B, 3]
    ambient: torch.Tensor  # [B]
    sky: torch.Tensor  # [B, 2, 3]
    present: torch.Tensor  # [B, S] bool
    label: torch.Tensor  # [B, S] int64, class ids into CLASS_NAMES
    center: torch.Tensor  # [B, S, 3]
    size: torch.Tensor  # [B, S, 3]
    yaw: torch.Tensor  # [B, S]
    color: torch.Tensor  # [B, S, 3]
    color2: torch.Tensor  # [B, S, 3]
    pattern: torch.Tensor  # [B, S] int64
    scale: torch.Tensor  # [B, S]
    phase: torch.Tensor  # [B, S, 2]
    texture: torch.Tensor  # [B, S] int64

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def select(self, rows) -> "SceneBatch":
        """The scenes at `rows` (a slice or index tensor)."""
        return SceneBatch(**{spec.name: getattr(self, spec.name)[rows] for spec in fields(self)})

    @classmethod
    def blank(cls, count: int) -> "SceneBatch":
        """`count` scenes of plain grey ground under a level camera 1.5 m up (60 degrees vertical field of view), the
        sun up and to the left behind the camera: edit the tensors to build a scene by hand."""
        check_positive("count", count)
        slots = (count, NUM_SLOTS)
        sun = torch.tensor([-0.4, 0.8, -0.3], dtype=torch.float64)
        return cls(
            seeds=torch.full((count,), -1, dtype=torch.int64),
            camera_height=torch.full((count,), 1.5, dtype=torch.float64),
            pitch=torch.zeros(count, dtype=torch.float64),
            fov=torch.full((count,), math.radians(60), dtype=torch.float64),
            sun=(sun / sun.norm()).expand(count, 3).clone(),
            ambient=torch.full((count,), 0.3, dtype=torch.float64),
            sky=torch.tensor([[0.85, 0.9, 0.95], [0.35, 0.55, 0.9]], dtype=torch.float64).expand(count, 2, 3).clone(),
            present=torch.arange(NUM_SLOTS).expand(slots) == 0,
            label=torch.where(torch.arange(NUM_SLOTS) == 0, GROUND, BOX).expand(slots).clone(),
            center=torch.zeros(*slots, 3, dtype=torch.float64),
            size=torch.ones(*slots, 3, dtype=torch.float64),
            yaw=torch.zeros(slots, dtype=torch.float64),
            color=torch.full((*slots, 3), 0.6, dtype=torch.float64),
            color2=torch.full((*slots, 3), 0.3, dtype=torch.float64),
            pattern=torch.full(slots, PLAIN, dtype=torch.int64),
            scale=torch.ones(slots, dtype=torch.float64),
            phase=torch.zeros(*slots, 2, dtype=torch.float64),
            texture=torch.zeros(slots, dtype=torch.int64),
        )


def check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


# ----------------------------------------------------------------------------------------------------------------------
# Sampling


class _Draws:
    """Hands out consecutive columns of the [B, DRAWS] uniforms, so every quantity has a fixed column."""

    def __init__(self, uniforms: torch.Tensor):
        self.uniforms, self.used = uniforms, 0

    def __call__(self, *shape: int) -> torch.Tensor:
        count = math.prod(shape)
        if self.used + count > DRAWS:
            raise RuntimeError(f"A layout needs more than DRAWS={DRAWS} uniforms; raise DRAWS.")
        columns = self.uniforms[:, self.used : self.used + count]
        self.used += count
        return columns.reshape(-1, *shape)

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * self(*shape)

    def log_uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low * (high / low) ** self(*shape)

    def choice(self, weights: Sequence[float], *shape: int) -> torch.Tensor:
        """Indices into `weights` (zero weights are never drawn; all zero gives index len(weights))."""
        cumulative = torch.tensor(weights, dtype=torch.float64).cumsum(0)
        return torch.bucketize(self(*shape) * cumulative[-1], cumulative, right=True)


def _hsv_colors(draws: _Draws, count: int, saturation=(0.2, 0.9), value=(0.35, 0.95)) -> torch.Tensor:
    """[B, count, 3] RGB colours of uniform hue."""
    hue, sat, val = draws(count, 1), draws.uniform(*saturation, count, 1), draws.uniform(*value, count, 1)
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue * 6) % 6
    return val - val * sat * torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp(min=0)


def _materials(draws: _Draws, count: int, weights: Sequence[float], scale: tuple[float, float], **color_range):
    """Colours, pattern, scale, phase and photo of `count` materials; `weights` are the odds of each of `PATTERNS`."""
    color = _hsv_colors(draws, count, **color_range)
    darker = color * draws.uniform(0.25, 0.6, count, 1)
    color2 = torch.where(draws(count, 1) < 0.5, darker, _hsv_colors(draws, count, **color_range))
    pattern = draws.choice(weights, count)
    texture = draws.choice([1.0] * len(TEXTURES), count)
    photo = torch.tensor([colorful for _, colorful in TEXTURES])[texture]
    light_tint = 0.75 + 0.25 * color  # a colour photo keeps its colours
    color = torch.where(((pattern == IMAGE) & photo).unsqueeze(-1), light_tint, color)
    return dict(color=color, color2=color2, pattern=pattern, scale=draws.log_uniform(*scale, count),
                phase=draws(count, 2) * 16, texture=texture)


def _ground_positions(draws: _Draws, count: int, near: float, far: float) -> torch.Tensor:
    """[B, count, 2] ground points (x, z) at log-uniform distances within `_OBJECT_AZIMUTH` of straight ahead."""
    distance = draws.log_uniform(near, far, count)
    azimuth = draws.uniform(-_OBJECT_AZIMUTH, _OBJECT_AZIMUTH, count)
    return torch.stack([distance * torch.sin(azimuth), distance * torch.cos(azimuth)], dim=-1)


def _walls(draws: _Draws) -> dict:
    """Large plain slabs standing 5-40 m away, facing the camera within 70 degrees."""
    count = len(WALL_SLOTS)
    present = draws(count) < torch.tensor([0.85, 0.5, 0.35], dtype=torch.float64)
    distance, facing = draws.log_uniform(5, 40, count), draws.uniform(-math.radians(70), math.radians(70), count)
    along, length, height = draws.uniform(-10, 10, count), draws.uniform(8, 40, count), draws.uniform(2.5, 8, count)
    normal = torch.stack([torch.sin(facing), torch.cos(facing)], dim=-1)
    tangent = torch.stack([torch.cos(facing), -torch.sin(facing)], dim=-1)
    ground = distance.unsqueeze(-1) * normal + along.unsqueeze(-1) * tangent
    size = torch.stack([length / 2, height / 2, torch.full_like(length, 0.15)], dim=-1)
    material = _materials(draws, count, (0.75, 0, 0, 0.1, 0.15), (0.5, 1.5), saturation=(0.05, 0.4), value=(0.5, 0.95))
    return dict(present=present, label=torch.full_like(present, WALL, dtype=torch.int64), ground=ground, size=size,
                yaw=facing, **material)


def _slab(draws: _Draws) -> dict:
    """A low, wide plain platform 4-20 m away."""
    present = draws(1) < 0.4
    ground = _ground_positions(draws, 1, 4, 20)
    size = torch.stack([draws.uniform(1.5, 6, 1), draws.uniform(0.08, 0.3, 1), draws.uniform(1.5, 6, 1)], dim=-1)
    material = _materials(draws, 1, (0.75, 0, 0, 0.1, 0.15), (0.5, 1.5), saturation=(0.05, 0.5))
    return dict(present=present, label=torch.full_like(present, SLAB, dtype=torch.int64), ground=ground, size=size,
                yaw=draws.uniform(0, math.pi, 1), **material)


def _blocks(draws: _Draws, allowed: list[float]) -> dict:
    """Boxes of random size, 1 m crates and cars, 4-30 m away."""
    count = len(BLOCK_SLOTS)
    present = draws(count) < 0.6
    weights = (0.4 * allowed[BOX], 0.3 * allowed[CRATE], 0.3 * allowed[CAR])
    kind = draws.choice(weights, count).clamp(max=2)  # all three excluded: absent (see `_assemble`)
    label = torch.tensor([BOX, CRATE, CAR])[kind]
    crate = torch.full((3,), CRATE_SIZE / 2, dtype=torch.float64)
    car = torch.tensor(CAR_SIZE, dtype=torch.float64) / 2
    size = torch.where((label == CRATE).unsqueeze(-1), crate, torch.where((label == CAR).unsqueeze(-1), car,
                                                                          draws.uniform(0.15, 1.0, count, 3)))
    material = _materials(draws, count, (0.2, 0.2, 0.15, 0.2, 0.25), (0.1, 0.5))
    return dict(present=present, label=label, ground=_ground_positions(draws, count, 4, 30),
                size=size, yaw=draws.uniform(0, math.pi, count), **material)


def _spheres(draws: _Draws) -> dict:
    count = len(SPHERE_SLOTS)
    present = draws(count) < 0.4
    radius = draws.uniform(0.2, 1.2, count)
    material = _materials(draws, count, (0.2, 0.2, 0.15, 0.2, 0.25), (0.1, 0.5))
    return dict(present=present, label=torch.full_like(present, SPHERE, dtype=torch.int64),
                ground=_ground_positions(draws, count, 3, 30), size=radius.unsqueeze(-1).expand(-1, -1, 3),
                yaw=draws.uniform(0, 2 * math.pi, count), **material)


def _cylinders(draws: _Draws, allowed: list[float]) -> dict:
    """Cylinders of random size and posts (0.1 m radius, 2 m tall), 3-30 m away."""
    count = len(CYLINDER_SLOTS)
    present = draws(count) < 0.55
    label = torch.tensor([CYLINDER, POST])[draws.choice((allowed[CYLINDER], allowed[POST]), count).clamp(max=1)]
    post = label == POST
    radius = torch.where(post, POST_RADIUS, draws.uniform(0.15, 0.8, count))
    half_height = torch.where(post, POST_HEIGHT / 2, draws.uniform(0.2, 1.5, count))
    material = _materials(draws, count, (0.2, 0.2, 0.15, 0.2, 0.25), (0.1, 0.5))
    return dict(present=present, label=label, ground=_ground_positions(draws, count, 3, 30),
                size=torch.stack([radius, half_height, radius], dim=-1), yaw=draws.uniform(0, 2 * math.pi, count),
                **material)


def _camera_and_light(draws: _Draws) -> dict:
    """Camera 1-2.5 m up with the horizon in view, sun 20-70 degrees high, ambient light and sky colours."""
    fov = draws.uniform(math.radians(45), math.radians(75), 1)[:, 0]
    lowest = math.radians(-3)
    pitch = lowest + draws(1)[:, 0] * (0.6 * fov / 2 - lowest)  # at most 0.6 of the half view below the horizon
    height = draws.uniform(1.0, 2.5, 1)[:, 0]
    elevation, azimuth = draws.uniform(math.radians(20), math.radians(70), 1), draws.uniform(-math.pi, math.pi, 1)
    sun = torch.cat([torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation),
                     torch.cos(elevation) * torch.cos(azimuth)], dim=-1)
    horizon = draws.uniform(0.72, 0.92, 1) + draws.uniform(-0.05, 0.05, 3)
    zenith = torch.tensor([0.2, 0.4, 0.75], dtype=torch.float64) + draws(3) * torch.tensor([0.3, 0.25, 0.2])
    return dict(camera_height=height, pitch=pitch, fov=fov, sun=sun, ambient=draws.uniform(0.15, 0.4, 1)[:, 0],
                sky=torch.stack([horizon, zenith], dim=1))


def _ground(draws: _Draws) -> dict:
    material = _materials(draws, 1, (0.15, 0.2, 0.05, 0.25, 0.35), (0.4, 2.5), saturation=(0.1, 0.6))
    count = material["color"].shape[0]
    return dict(present=torch.ones(count, 1, dtype=torch.bool), label=torch.full((count, 1), GROUND),
                ground=torch.zeros(count, 1, 2, dtype=torch.float64), size=torch.ones(count, 1, 3, dtype=torch.float64),
                yaw=torch.zeros(count, 1, dtype=torch.float64), **material)


def _assemble(scene: dict, groups: list[dict], allowed: torch.Tensor) -> dict:
    """The slot tensors of `groups` (in slot order), objects standing on the ground, classes not `allowed` absent."""
    slots = {name: torch.cat([group[name] for group in groups], dim=1) for name in groups[0]}
    ground = slots.pop("ground")
    half_height = slots["size"][..., 1]
    slots["center"] = torch.stack([ground[..., 0], torch.where(slots["label"] == GROUND, 0.0, half_height),
                                   ground[..., 1]], dim=-1)
    slots["present"] = slots["present"] & allowed[slots["label"]]
    return scene | slots


def scene_layouts(seeds: Sequence[int] | torch.Tensor, classes: Sequence[str] | None = None) -> SceneBatch:
    """The random layouts of the scenes `seeds` (each a pure function of its seed and `classes`).

    A scene holds 0-3 large plain walls, maybe a low plain slab, up to 4 boxes / 1 m crates / cars, up to 3 spheres
    and up to 4 cylinders / 2 m posts, all standing on a textured ground plane, under a camera whose horizon is in
    view. `classes` restricts the object classes (names from `OBJECT_CLASSES`; default all); sky and ground are
    always there.
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1)
    if seeds.numel() == 0:
        raise ValueError("seeds must hold at least one seed.")
    if (seeds < 0).any():
        raise ValueError(f"seeds must be >= 0, got {seeds[seeds < 0][:4].tolist()}.")
    allowed = allowed_classes(classes)
    uniforms = torch.stack([torch.rand(DRAWS, generator=torch.Generator().manual_seed(int(seed)),
                                       dtype=torch.float64) for seed in seeds.tolist()])
    draws = _Draws(uniforms)
    scene = _camera_and_light(draws)
    weights = allowed.double().tolist()
    groups = [_ground(draws), _walls(draws), _slab(draws), _blocks(draws, weights), _spheres(draws),
              _cylinders(draws, weights)]
    return SceneBatch(seeds=seeds, **_assemble(scene, groups, allowed))


def allowed_classes(classes: Sequence[str] | None) -> torch.Tensor:
    """[len(CLASS_NAMES)] bool: which classes may appear, given object class names (None: all)."""
    allowed = torch.ones(len(CLASS_NAMES), dtype=torch.bool)
    if classes is None:
        return allowed
    if isinstance(classes, str) or not all(isinstance(name, str) for name in classes):
        raise ValueError(f"classes must be a sequence of class names, got {classes!r}.")
    unknown = sorted(set(classes) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"classes: unknown class names {unknown}; known: {list(CLASS_NAMES)}.")
    if not set(classes) & set(OBJECT_CLASSES):
        raise ValueError(f"classes must name at least one object class of {list(OBJECT_CLASSES)}, got {list(classes)}.")
    allowed[WALL:] = torch.tensor([name in classes for name in OBJECT_CLASSES])
    return allowed
