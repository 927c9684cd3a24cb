"""Surface colours for the batched scene renderer: procedural patterns and photo textures, both filtered by the pixel's
footprint on the surface so distant patterns fade to their mean instead of aliasing.

The photos are the sample images bundled with scikit-image (imported only when the first bank is built); each device
keeps one `TextureBank` (`texture_bank`). Patterns (`render_layouts.PATTERNS`) are computed analytically from surface
coordinates: checker, stripes and two-octave value noise over an integer hash (exact on every device).
"""

import functools
import math

import torch
import torch.nn.functional as F

from .render_layouts import CHECKER, IMAGE, PLAIN, STRIPES, TEXTURES

TILE = 256  # texels per side of a photo in the bank
_COARSE = 8  # the coarse level averages _COARSE x _COARSE texels


@functools.cache
def _photo_tiles() -> torch.Tensor:
    """[T, 3, TILE, TILE] linear-RGB squares cut from the centre of each photo of `TEXTURES`."""
    import skimage.data

    tiles = []
    for name, _ in TEXTURES:
        pixels = torch.from_numpy(getattr(skimage.data, name)()).float() / 255
        pixels = (pixels.unsqueeze(-1).expand(-1, -1, 3) if pixels.ndim == 2 else pixels[..., :3]).permute(2, 0, 1)
        side = min(pixels.shape[1:])
        top, left = (pixels.shape[1] - side) // 2, (pixels.shape[2] - side) // 2
        square = pixels[None, :, top : top + side, left : left + side]
        tiles.append(F.interpolate(square, size=(TILE, TILE), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(tiles).clamp(0, 1) ** 2.2  # sRGB to linear (the renderer shades in linear light)


class TextureBank:
    """The photos side by side in one atlas [1, 3, TILE, T * TILE], the same averaged over `_COARSE`-texel blocks, and
    each photo's mean colour [T, 3], all on one device."""

    def __init__(self, tiles: torch.Tensor):
        count = tiles.shape[0]
        self.fine = tiles.permute(1, 2, 0, 3).reshape(1, 3, TILE, count * TILE)
        self.coarse = F.avg_pool2d(self.fine, _COARSE)
        self.mean = tiles.mean(dim=(2, 3))

    def sample(self, texture: torch.Tensor, u: torch.Tensor, v: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
        """[C, 3, H, W] colours of photo `texture` at (u, v) (one photo per unit, repeating, v up) for pixels
        `footprint` units wide: bilinear at full resolution, blended into the coarse level and then the mean as the
        footprint covers more texels (a three-level mipmap)."""
        chunk, height, width = texture.shape
        x = (texture + (u - torch.floor(u))) * (2 / len(TEXTURES)) - 1
        y = 1 - 2 * (v - torch.floor(v))
        grid = torch.stack([x, y], dim=-1).view(1, chunk * height, width, 2)
        levels = [F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False)
                  .view(3, chunk, height, width).transpose(0, 1) for level in (self.fine, self.coarse)]
        mean = self.mean[texture].permute(0, 3, 1, 2)
        lod = (torch.log2((footprint * TILE).clamp(min=1)) / math.log2(_COARSE)).unsqueeze(1)
        fine_weight, mean_weight = (1 - lod).clamp(0, 1), (lod - 1).clamp(0, 1)
        return fine_weight * levels[0] + (1 - fine_weight - mean_weight) * levels[1] + mean_weight * mean


_BANKS: dict[torch.device, TextureBank] = {}


def texture_bank(device: torch.device | str) -> TextureBank:
    """The `TextureBank` of `device`, built on first use (the photos are read once per process)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _BANKS:
        _BANKS[device] = TextureBank(_photo_tiles().to(device))
    return _BANKS[device]


def _hash(iu: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
    """Pseudo-random values in [0, 1] of int64 lattice points (kept below 2**32 before each product: no overflow)."""
    h = (iu * 73856093 ^ iv * 19349663) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).float() * (1 / 0xFFFF)


def _value_noise(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1]: hashed lattice values, interpolated with a smoothstep."""
    fu, fv = torch.floor(u), torch.floor(v)
    su, sv = u - fu, v - fv
    su, sv = su * su * (3 - 2 * su), sv * sv * (3 - 2 * sv)
    iu, iv = fu.long(), fv.long()
    low = torch.lerp(_hash(iu, iv), _hash(iu + 1, iv), su)
    high = torch.lerp(_hash(iu, iv + 1), _hash(iu + 1, iv + 1), su)
    return torch.lerp(low, high, sv)


def _pattern_mix(pattern: torch.Tensor, u: torch.Tensor, v: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """How much of the second colour each pixel gets, in [0, 1], for (u, v) in cells and `footprint` in cells; a
    pattern fades to its mean (0.5) between a quarter and a whole cell per pixel."""
    fu, fv = torch.floor(u), torch.floor(v)
    checker = torch.remainder(fu + fv, 2)
    stripes = torch.remainder(fu, 2)
    noise = 0.65 * _value_noise(u, v) + 0.35 * _value_noise(2.7 * u + 17.3, 2.7 * v + 5.1)
    mix = torch.where(pattern == CHECKER, checker, torch.where(pattern == STRIPES, stripes, noise))
    fade = ((footprint - 0.25) / 0.75).clamp(0, 1)
    return torch.where(pattern == PLAIN, 0.0, mix + (0.5 - mix) * fade)


def surface_albedo(material: dict, u: torch.Tensor, v: torch.Tensor, footprint: torch.Tensor,
                   bank: TextureBank) -> torch.Tensor:
    """[C, 3, H, W] linear albedo at surface coordinates (u, v) in metres, for pixels `footprint` metres wide.

    `material` holds each pixel's material: `pattern`, `texture` (int64 [C, H, W]), `scale`, `phase_u`, `phase_v`
    ([C, H, W]) and `color`, `color2` ([C, 3, H, W]), as in `render_layouts.SceneBatch`.
    """
    pattern, scale = material["pattern"], material["scale"]
    u, v, footprint = u / scale + material["phase_u"], v / scale + material["phase_v"], footprint / scale
    color = material["color"]
    procedural = torch.lerp(color, material["color2"], _pattern_mix(pattern, u, v, footprint).unsqueeze(1))
    photo = color * bank.sample(material["texture"], u / 4, v / 4, footprint / 4)
    return torch.where((pattern == IMAGE).unsqueeze(1), photo, procedural)
