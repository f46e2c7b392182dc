"""A miniature MTIL tree: the real datasets' names, class lists and templates, a few generated images per class.

``launch/convert_mtil.py`` writes the real benchmark in the folder layout of ``docs/mtil.md``. This
module writes the *same layout* with the same dataset folder names, the bundled class names (label
order) and prompt templates of :mod:`datagen.gift.mtil_meta`, but with a few small generated images per
class instead of photographs, so that the real-scale GIFT config's code path (folder tasks, their
zero-shot evaluation over all classes, the accuracy matrix) runs offline in tests and under
``synthloop continual --tiny-random``.

Image ``k`` of class ``c`` is a pure function of ``(dataset, split, c, k, image_size)``: a background
whose hue is the class's position on the colour wheel, a bright disc whose position and radius also
depend on the class, plus per-image noise. It is data for plumbing, not for accuracies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .folders import CLASSNAMES_FILE, META_FILE, SPLITS, TEMPLATES_FILE
from .mtil_meta import EXPECTED_NUM_CLASSES, MTIL_META

MINI_FORMAT = "synthloop-mini-mtil-1"


def _class_image(name: str, split: str, label: int, k: int, n_classes: int, size: int) -> Image.Image:
    seed = int.from_bytes(hashlib.sha256(f"{name}/{split}/{label}/{k}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    hue = label / max(1, n_classes)
    rgb = 127.5 + 110.0 * np.cos(2 * np.pi * (hue - np.array([0.0, 1 / 3, 2 / 3])))
    img = np.broadcast_to(rgb, (size, size, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.3 + 0.4 * ((label * 7) % 11) / 10, 0.3 + 0.4 * ((label * 3) % 7) / 6
    r = 0.12 + 0.1 * (label % 3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 245.0
    img += rng.normal(0.0, 12.0, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def build_mini_mtil(root: str | os.PathLike, datasets: list[str] | None = None, per_class: int = 2,
                    image_size: int = 32) -> Path:
    """Write the miniature tree under ``root`` and return it; datasets already written with the same
    settings are kept (each is built in ``<root>/.<Dataset>.partial`` and renamed when complete).

    ``datasets``: names from ``docs/mtil.md`` (default: all 11). ``per_class``: images per class in each
    of ``train`` and ``test``.
    """
    root = Path(root)
    names = list(datasets) if datasets is not None else sorted(MTIL_META)
    unknown = [n for n in names if n not in MTIL_META]
    if unknown:
        raise ValueError(f"build_mini_mtil: unknown dataset(s) {unknown}; known: {sorted(MTIL_META)}")
    if per_class < 1 or image_size < 8:
        raise ValueError(f"build_mini_mtil: per_class must be >= 1 and image_size >= 8 "
                         f"(got {per_class}, {image_size})")
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        meta = MTIL_META[name]
        want = {"format": MINI_FORMAT, "dataset": name, "per_class": per_class, "image_size": image_size,
                "num_classes": len(meta.classnames)}
        final = root / name
        if (final / META_FILE).is_file():
            try:
                have = json.loads((final / META_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                have = None
            if isinstance(have, dict) and all(have.get(k) == v for k, v in want.items()):
                continue
            raise FileExistsError(f"{final} exists and is not a miniature MTIL folder with these settings "
                                  f"({want}); give another root or delete it")
        assert len(meta.classnames) == EXPECTED_NUM_CLASSES[name]
        tmp = root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        counts = {}
        for split in SPLITS:
            n = 0
            for label in range(len(meta.classnames)):
                d = tmp / split / f"{label:03d}"
                d.mkdir(parents=True)
                for k in range(per_class):
                    _class_image(name, split, label, k, len(meta.classnames), image_size).save(
                        d / f"{label * per_class + k:06d}.png")
                    n += 1
            counts[split] = n
        (tmp / CLASSNAMES_FILE).write_text("\n".join(meta.classnames) + "\n", encoding="utf-8")
        (tmp / TEMPLATES_FILE).write_text("\n".join(meta.templates) + "\n", encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps({**want, "source": "generated (datagen.gift.mini_mtil)",
                                                 "classnames_from": "datagen.gift.mtil_meta", "counts": counts},
                                                indent=1), encoding="utf-8")
        os.replace(tmp, final)
    return root
