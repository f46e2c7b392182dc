"""Rasterise a :class:`~datagen.world.scene.Scene` into a small RGB image with PIL.

Glyphs (all inside the object's bounding radius ``r``):

* cube     -- filled square, half-side 0.72 r;
* sphere   -- filled disc, radius 0.85 r;
* cylinder -- upright capsule-like silhouette (rectangle with elliptical top and bottom, 1.1 r wide,
  1.7 r tall) with a lighter elliptical top face: narrower than the square, taller than wide, and
  with a visible cap, so it stays distinct from cube and sphere even at 32 px.

Materials: rubber is a flat matte fill; metal gets a dark outline, a darker lower half and a white
specular highlight in the upper left.

Speed: everything is drawn with ``ImageDraw`` (C loops) on a canvas supersampled ``f`` times
(4x at <= 64 px, 2x above) and reduced with a box filter (``Image.reduce``), which
anti-aliases edges at a fraction of a LANCZOS resize's cost. See ``bench/world.py``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import RADIUS, Scene, SceneObject, WorldConfigError

MIN_SIZE, MAX_SIZE = 32, 224

# Clearly distinct colours, all readable on a light background (yellow is deepened for contrast).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (110, 110, 110),
    "red": (200, 30, 30),
    "blue": (40, 70, 220),
    "green": (30, 140, 40),
    "brown": (130, 80, 30),
    "purple": (135, 45, 195),
    "cyan": (30, 195, 205),
    "yellow": (235, 200, 20),
}

BACKGROUND = (236, 236, 233)  # near-white, slightly warm
BG_JITTER = 10  # max +- tone offset per channel family
BG_GRADIENT = 10  # max top-to-bottom brightness ramp

_ramp_cache: dict[int, np.ndarray] = {}


def _mix(c: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    """Linear blend ``(1 - t) * c + t * other``."""
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c, other))  # type: ignore[return-value]


_WHITE, _BLACK = (255, 255, 255), (0, 0, 0)
# Precomputed shades per colour: (fill, cylinder top, metal outline, metal shadow)
_SHADES = {
    name: (rgb, _mix(rgb, _WHITE, 0.4), _mix(rgb, _BLACK, 0.6), _mix(rgb, _BLACK, 0.25))
    for name, rgb in COLOR_RGB.items()
}


def supersampling(size: int) -> int:
    """Supersampling factor used at output ``size`` (canvas side = size * factor)."""
    return 4 if size <= 64 else 2


def check_size(size: int, key: str | None = None) -> int:
    """Validate an output image side; raise :class:`~datagen.world.scene.WorldConfigError` (a ValueError)
    naming it (and the argument ``key``, e.g. ``"WorldCaptions.image_size"``) when it is not in 32..224."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        where = f"{key}: " if key else ""
        raise WorldConfigError(f"{where}image size {size!r} is not supported: must be an int in {MIN_SIZE}..{MAX_SIZE}")
    return int(size)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, f: int) -> None:
    """Draw one object on a canvas of ``side`` pixels (supersampling factor ``f``)."""
    cx, cy, r = obj.x * side, obj.y * side, RADIUS[obj.size] * side
    fill, top, outline_c, shadow = _SHADES[obj.color]
    metal = obj.material == "metal"
    # Outline about 0.6 output pixels wide (at least one canvas pixel): visible, yet it does not
    # swallow a small glyph's fill at 32 px.
    ow = max(1, int(round(0.6 * f + 0.04 * r))) if metal else 0
    outline = outline_c if metal else None
    if obj.shape == "cube":
        h = 0.72 * r
        box = (cx - h, cy - h, cx + h, cy + h)
        draw.rectangle(box, fill=fill, outline=outline, width=ow)
        if metal:  # darker lower half suggests a reflective gradient
            draw.rectangle((cx - h + ow, cy + 0.1 * h, cx + h - ow, cy + h - ow), fill=shadow)
    elif obj.shape == "sphere":
        rr = 0.85 * r
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill, outline=outline, width=ow)
        if metal:
            draw.chord((cx - rr + ow, cy - rr + ow, cx + rr - ow, cy + rr - ow), 20, 160, fill=shadow)
    else:  # cylinder: body + bottom ellipse + lighter top ellipse
        hw, hh, cap = 0.55 * r, 0.85 * r, 0.22 * r
        draw.ellipse((cx - hw, cy + hh - 2 * cap, cx + hw, cy + hh), fill=fill, outline=outline, width=ow)
        draw.rectangle((cx - hw, cy - hh + cap, cx + hw, cy + hh - cap), fill=fill, outline=outline, width=ow)
        if metal:  # repaint the body interior so the rectangle's outline does not cut the bottom ellipse
            draw.rectangle((cx - hw + ow, cy - hh + cap, cx + hw - ow, cy + hh - cap), fill=fill)
            draw.rectangle((cx + 0.1 * hw, cy - hh + cap, cx + hw - ow, cy + hh - cap), fill=shadow)
        draw.ellipse((cx - hw, cy - hh, cx + hw, cy - hh + 2 * cap), fill=top, outline=outline, width=ow)
    if metal:  # specular highlight, upper left, at least ~1 output pixel across
        if obj.shape == "cylinder":  # inside the narrow body, below the cap
            hr, hx, hy = max(0.13 * r, 0.5 * f), cx - 0.22 * r, cy - 0.05 * r
        else:
            hr, hx, hy = max(0.2 * r, 0.6 * f), cx - 0.3 * r, cy - 0.3 * r
        draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=_WHITE)


def _ramp(size: int) -> np.ndarray:
    """Cached vertical ramp in [-0.5, 0.5], shape (size, 1, 1)."""
    ramp = _ramp_cache.get(size)
    if ramp is None:
        ramp = (np.linspace(-0.5, 0.5, size, dtype=np.float32))[:, None, None]
        _ramp_cache[size] = ramp
    return ramp


def render_scene(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """Render ``scene`` as an RGB ``size`` x ``size`` image (``size`` in 32..224).

    Objects are drawn back to front (increasing ``y``), so nearer objects would cover farther ones
    (they never overlap in sampled scenes, but edited or hand-made scenes may). With ``rng`` the
    background tone and a subtle vertical gradient are jittered; without it the background is the
    fixed ``BACKGROUND`` colour. An empty scene renders as background only.
    """
    size = check_size(size)
    f = supersampling(size)
    side = size * f
    bg = BACKGROUND
    grad = 0.0
    if rng is not None:
        j = rng.integers(-BG_JITTER, BG_JITTER + 1, size=4)
        # One shared brightness offset plus a smaller per-channel tint keeps the background light.
        bg = tuple(int(min(255, max(200, c + j[0] + j[k + 1] // 3))) for k, c in enumerate(BACKGROUND))
        grad = float(rng.uniform(-BG_GRADIENT, BG_GRADIENT))
    img = Image.new("RGB", (side, side), bg)
    if scene.objects:
        draw = ImageDraw.Draw(img)
        for obj in sorted(scene.objects, key=lambda o: o.y):
            _draw_object(draw, obj, side, f)
    if f > 1:
        img = img.reduce(f)
    if grad:
        # The gradient is smooth, so it is applied after downsampling (cheaper) with numpy.
        arr = np.asarray(img, dtype=np.float32) + grad * _ramp(size)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img
