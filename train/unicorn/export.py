"""``synthloop export-hf``: a trained Unicorn VLM folder -> a Hugging Face folder the Auto classes load.

    synthloop export-hf --vlm runs/unicorn_toy/instruct/vlm --out runs/unicorn_toy/hf --world-pool 1024
    synthloop export-hf --vlm checkpoints/unicorn/vlm --out hf/unicorn --reference-images 'coco/val2017/*.jpg'
    synthloop export-hf --vlm ... --out ... --no-centering                 # export the tower uncentred

Then, anywhere with ``transformers`` and ``open_clip`` (no synthloop)::

    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)

The reference pool sets the test-time centring (``models.hf_vlm``): ``--world-pool N`` renders N unpaired
scenes of the world with 1-3 objects (seed ``--pool-seed``: the toy's own pool by default), ``--reference-images`` takes real images
(a glob, a folder, up to ``--max-reference`` of them in sorted order).
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from models.errors import positive_int



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="synthloop export-hf", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--vlm", required=True, help="a VLM folder written by EmbeddingVLM.save_pretrained")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--world-pool", type=positive_int, help="centre with N rendered world scenes")
    ref.add_argument("--reference-images", help="centre with these images (glob or folder)")
    ref.add_argument("--no-centering", action="store_true", help="no test-time centring")
    p.add_argument("--pool-seed", type=int, default=555_000_111, help="seed of --world-pool (the toy's default)")
    p.add_argument("--image-size", type=positive_int, default=None, help="render size of --world-pool (default: "
                   "the tower's input size)")
    p.add_argument("--max-reference", type=positive_int, default=4096)
    a = p.parse_args(argv)
    if not (Path(a.vlm) / "vlm_config.json").is_file():
        p.error(f"--vlm {a.vlm}: not a synthloop VLM folder (no vlm_config.json)")
    files: list[str] = []
    if a.reference_images:
        pattern = str(Path(a.reference_images) / "*") if Path(a.reference_images).is_dir() else a.reference_images
        files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if not files:
            p.error(f"--reference-images {a.reference_images}: no .jpg/.png/.webp image found")
        files = files[:a.max_reference]

    import numpy as np
    import torch
    from PIL import Image

    from models.hf_vlm import save_hf_vlm
    from models.vlm import EmbeddingVLM

    vlm = EmbeddingVLM.from_pretrained(a.vlm).eval()
    tower = vlm.vision_tower
    if tower is None:
        p.error(f"--vlm {a.vlm}: this VLM has no vision tower, so it cannot read images")
    if a.no_centering:
        out = save_hf_vlm(vlm, a.out, image_centering="none")
        n = 0
    else:
        if files:
            images = [Image.open(f).convert("RGB") for f in files]
        else:
            from datagen.world import render_scene, sample_scene

            size = a.image_size or int(np.atleast_1d(tower.visual.image_size)[0])
            rng = np.random.default_rng(a.pool_seed)
            images = [render_scene(sample_scene(rng, (1, 3)), size, rng) for _ in range(a.world_pool)]
        pixels = torch.stack([tower.preprocess(im) for im in images])
        out = save_hf_vlm(vlm, a.out, reference_images=pixels)
        n = len(images)
    rule = "uncentred" if a.no_centering else f"centred with the mean of {n} reference image(s)"
    print(f"wrote {out} ({rule}); load it with AutoModelForImageTextToText.from_pretrained({str(out)!r}, "
          f"trust_remote_code=True) and AutoProcessor")
