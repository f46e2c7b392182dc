"""A style-shifted stand-in for Stable Diffusion in the toy: replay images that are *not* evaluation images.

GIFT replays images that a text-to-image model generated from class-name prompts: they show what the
prompt says, in the generator's own style, which differs from the evaluation photographs. The toy's
first replay backend (``WorldT2I``) rendered prompts with the evaluation renderer itself, and digits
prompts returned real training digits: rehearsal of the evaluation distribution, an oracle.

``StyledWorldT2I`` (backend ``world_styled``) keeps the content (the scene a prompt describes: the same
shapes, colours, materials, sizes, counts and left/right order) and changes the look:

* a dark, textured background (smooth random blotches over a dark tone; the evaluation images are
  near-white with a faint gradient);
* object colours shifted per image (a gain of +-15% per channel) and shaded (lighter towards the upper
  left), with a soft drop shadow;
* a slight blur and pixel noise over the whole image (no crisp edges);
* digits drawn from a font (Pillow's bundled scalable font) at a random size, slant and stroke, light
  ink on the dark background: no image from sklearn's digits, the digits task's own source.

A diffusers UNet trained on these renders (the method's own kind of generator) was tried with
``bench/toy_diffusion.py``: after 15 CPU minutes its samples did not show their prompts
(``docs/results/gift.md``, "A diffusion replay generator, tried"), so this procedural generator is the
toy's replay. How far its images are from the evaluation images is measured by ``bench/replay_gap.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from datagen.world import get_task_family, render_scene, sample_scene
from datagen.world.render import BACKGROUND
from datagen.world.scene import Scene

from .prompts import world_prompt_spec
from .t2i import RenderedT2I

STYLE_VERSION = 1  # hashed into replay-set keys: bump when the look changes


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark textured background, (size, size, 3) float32 in 0..255."""
    base = rng.uniform(25, 85, size=3)
    coarse = rng.normal(0.0, 1.0, size=(6, 6, 3)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8))
                        .resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0 - 0.5
    return np.clip(base + 40.0 * blotch, 0, 255).astype(np.float32)


def _finish(arr: np.ndarray, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 0.9))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 6.0, size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def render_scene_styled(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """``scene`` in the shifted style (same geometry as :func:`datagen.world.render_scene`)."""
    flat = np.asarray(render_scene(scene, size, None), dtype=np.float32)  # fixed light background
    bg = np.array(BACKGROUND, np.float32)
    # coverage of each pixel by objects, from its distance to the flat background colour
    alpha = np.clip(np.abs(flat - bg).max(axis=-1, keepdims=True) / 60.0, 0.0, 1.0)
    colour = (flat - (1.0 - alpha) * bg) / np.maximum(alpha, 1e-3)
    colour = colour * rng.uniform(0.85, 1.15, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 1.15 - 0.3 * (0.5 * xx + 0.5 * yy)  # lighter towards the upper left
    colour = colour * light[..., None]
    back = _texture(rng, size)
    shadow = np.asarray(Image.fromarray((alpha[..., 0] * 255).astype(np.uint8))
                        .filter(ImageFilter.GaussianBlur(radius=size / 40)), dtype=np.float32)[..., None] / 255.0
    shift = max(1, size // 32)
    shadow = np.roll(np.roll(shadow, shift, axis=0), shift, axis=1)
    back = back * (1.0 - 0.6 * shadow)
    return _finish(alpha * colour + (1.0 - alpha) * back, rng)


_FONT_CACHE: dict[int, Any] = {}


def _font(px: int) -> Any:
    if px not in _FONT_CACHE:
        _FONT_CACHE[px] = ImageFont.load_default(size=px)  # Pillow's bundled scalable font: no system fonts
    return _FONT_CACHE[px]


def render_digit_styled(digit: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A font-rendered ``digit`` (0-9): light, slanted, randomly placed, on the dark textured background."""
    canvas = 4 * size
    layer = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(layer)
    px = int(canvas * rng.uniform(0.45, 0.7))
    stroke = int(rng.integers(0, max(1, px // 14) + 1))
    font = _font(px)
    box = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
    w, h = box[2] - box[0], box[3] - box[1]
    x = (canvas - w) / 2 - box[0] + rng.uniform(-0.12, 0.12) * canvas
    y = (canvas - h) / 2 - box[1] + rng.uniform(-0.12, 0.12) * canvas
    draw.text((x, y), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    shear = float(rng.uniform(-0.3, 0.3))
    layer = layer.transform(layer.size, Image.AFFINE, (1, shear, -shear * canvas / 2, 0, 1, 0), Image.BILINEAR)
    layer = layer.rotate(float(rng.uniform(-15, 15)), Image.BILINEAR).reduce(4)
    ink = np.asarray(layer, dtype=np.float32)[..., None] / 255.0
    colour = rng.uniform(170, 255, size=3)
    return _finish(ink * colour + (1.0 - ink) * _texture(rng, size), rng)


class StyledWorldT2I(RenderedT2I):
    """World prompts -> images of what they say, in a style unlike the evaluation renders (see the module
    docstring). Same prompt coverage as ``WorldT2I``; image ``k`` depends only on ``(prompt, seeds[k],
    image_size)``; an unknown prompt is a ValueError."""

    name = "world_styled"

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = int(image_size)

    def config(self) -> dict[str, Any]:
        return {"backend": self.name, "image_size": self.image_size, "style_version": STYLE_VERSION,
                "describes": True}

    def render(self, prompt: str, seed: int) -> tuple[Image.Image, dict]:
        spec = world_prompt_spec(prompt)
        if spec is None:
            raise ValueError(f"StyledWorldT2I cannot render {prompt!r}: not a world base prompt nor a task-family "
                             "prompt")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**64 - 1), 0x57E1]))
        size = self.image_size
        if spec["kind"] == "family":
            if spec["family"] == "digits":
                return render_digit_styled(int(spec["label"]), size, rng), {"family": "digits",
                                                                             "label": spec["label"], "font": True}
            fam = get_task_family(spec["family"])
            # the family's own scene for the label (its content rules), drawn in the shifted style
            _, meta = fam.render_label_with_meta(rng, spec["label"], 32, "train")
            scene = Scene.from_dict(meta["scene"])
            return render_scene_styled(scene, size, rng), {"family": spec["family"], "label": spec["label"],
                                                           "scene": scene.to_dict()}
        if spec["kind"] == "objects":
            scene = sample_scene(rng, len(spec["objects"]))
            scene = Scene(tuple(o.replace(**want) for o, want in zip(scene.objects, spec["objects"])))
        else:
            scene = sample_scene(rng, 1, **{a + "s": (v,) for a, v in spec["attrs"].items()})
        return render_scene_styled(scene, size, rng), {"scene": scene.to_dict()}
