"""Text-to-image backends for GIFT replay sets, behind one interface (:class:`TextToImage`).

* :class:`DiffusersT2I` -- a diffusers text-to-image pipeline (the paper: Stable Diffusion 1.5, fp16,
  50 PNDM steps, guidance 7.5, 512 px; DPM-Solver for fewer steps). Loaded lazily on first use so that
  hashing a config (cache look-up) never loads weights.
* :class:`WorldT2I` -- the scene-world renderer as a "perfect" toy generator: a prompt is mapped back to
  what it describes and rendered (deterministic from the seed).
* :func:`tiny_diffusers_pipeline` -- a tiny randomly initialised Stable Diffusion pipeline saved to disk,
  loadable offline, so the diffusers path is testable on CPU in seconds.

``generate(prompts, seeds)`` returns one image per prompt, or None where the image was dropped (all
black: the safety checker's replacement). ``config()`` is everything that determines the images; it is
hashed into the replay-set cache key, so it must not hold things that do not change the output
(batch size, device) except where they do (dtype).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image

from datagen.world import get_task_family, render_scene, sample_scene
from datagen.world.scene import Scene

from .prompts import world_prompt_spec
from .styled import StyledWorldT2I
from .t2i import RenderedT2I, TextToImage

log = logging.getLogger(__name__)

SCHEDULERS = {"pndm": "PNDMScheduler", "dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler",
              "euler": "EulerDiscreteScheduler"}
DTYPES = ("fp16", "bf16", "fp32")


def is_black(image: Image.Image) -> bool:
    """Whether every pixel is 0 (what the SD safety checker returns for a flagged image)."""
    return not np.asarray(image).any()


# ------------------------------------------------------------------------------------------------
# scene world
# ------------------------------------------------------------------------------------------------
class WorldT2I(RenderedT2I):
    """The world renderer as a text-to-image model for world prompts (toy runs and tests).

    Base prompts ("a photo of a red cube.") -> one object with the named attributes, the others random;
    two-object prompts ("a photo of a red cube and a blue sphere.") -> those two objects;
    task-family prompts (any template of a registered family with one of its class names) ->
    ``family.render_label(rng, label, image_size, "train")`` (digits prompts give a digit image).
    Image ``k`` depends only on ``(prompt, seeds[k], image_size)``. Unknown prompt -> ValueError.
    """

    name = "world"

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = int(image_size)

    def config(self) -> dict[str, Any]:
        # "describes": sets written since items record which pool prompts describe them (a new content hash)
        return {"backend": self.name, "image_size": self.image_size, "describes": True}

    def render(self, prompt: str, seed: int) -> tuple[Image.Image, dict]:
        """One image of ``prompt`` and a JSON-able description (``{"scene": ...}`` or ``{"family", "label"}``)."""
        spec = world_prompt_spec(prompt)
        if spec is None:
            raise ValueError(f"WorldT2I cannot render {prompt!r}: not a world base prompt nor a task-family prompt")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**64 - 1)]))
        if spec["kind"] == "family":
            fam = get_task_family(spec["family"])
            image, meta = fam.render_label_with_meta(rng, spec["label"], self.image_size, "train")
            return image, {"family": spec["family"], "label": spec["label"], **meta}
        if spec["kind"] == "objects":  # a random layout of len(objects) objects, then the named attributes
            scene = sample_scene(rng, len(spec["objects"]))
            scene = Scene(tuple(o.replace(**want) for o, want in zip(scene.objects, spec["objects"])))
            return render_scene(scene, self.image_size, rng), {"scene": scene.to_dict()}
        # sample_scene filters by plural attribute names; unnamed attributes keep their full value range
        filters = {a + "s": (v,) for a, v in spec["attrs"].items()}
        scene = sample_scene(rng, 1, **filters)
        return render_scene(scene, self.image_size, rng), {"scene": scene.to_dict()}


# ------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------
def _looks_like_path(model: str) -> bool:
    # Hub ids are "owner/name" (one slash, no leading dot); anything else that is not a hub id is a path.
    return (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
            or os.sep != "/" and os.sep in model or os.path.exists(model))


def _dir_fingerprint(path: str) -> str:
    """Cheap identity of a local model directory: file names, sizes and hashes of each file's first and
    last MiB (catches re-initialised or swapped weights without reading gigabytes)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for fn in sorted(files):
            full = os.path.join(root, fn)
            size = os.path.getsize(full)
            h.update(f"{os.path.relpath(full, path)}\0{size}\0".encode())
            with open(full, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(-(1 << 20), os.SEEK_END)
                    h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


class DiffusersT2I(TextToImage):
    """A diffusers text-to-image pipeline with a chosen scheduler, batched, one seeded generator per image.

    ``model``: a local directory (must exist, else FileNotFoundError) or a hub id. ``scheduler``: "pndm"
    (the paper's 50 steps), "dpm" (DPM-Solver++ multistep, for ~25 steps), "ddim" or "euler"; built with
    ``Scheduler.from_config(pipe.scheduler.config)``. ``dtype`` fp16/bf16 need a GPU: on CPU fp32 is used
    (warning). Initial noise comes from per-image *CPU* generators seeded from ``seeds``, so an image does
    not depend on its batch mates nor on the device's RNG. Images flagged by the safety checker
    (``nsfw_content_detected``) or all black are returned as None and counted in ``n_dropped``.
    """

    name = "diffusers"

    def __init__(self, model: str, scheduler: str = "pndm", steps: int = 50, guidance_scale: float = 7.5,
                 height: int = 512, width: int = 512, batch_size: int = 8, dtype: str = "fp16",
                 device: str = "cuda", negative_prompt: str | None = None, safety_checker: bool = True,
                 local_files_only: bool = False) -> None:
        model = os.fspath(model)
        if _looks_like_path(model):
            model = os.path.abspath(os.path.expanduser(model))
            if not os.path.isdir(model):
                raise FileNotFoundError(f"DiffusersT2I: model directory {model!r} does not exist")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not str(device).startswith("cuda") and dtype != "fp32":
            # Half precision on CPU is unsupported by many kernels and very slow where it works.
            warnings.warn(f"DiffusersT2I: dtype {dtype} on {device} is not supported; using fp32", stacklevel=2)
            dtype = "fp32"
        self.model, self.scheduler, self.steps = model, scheduler, int(steps)
        self.guidance_scale, self.height, self.width = float(guidance_scale), int(height), int(width)
        self.batch_size, self.dtype, self.device = max(1, int(batch_size)), dtype, str(device)
        self.negative_prompt, self.safety_checker = negative_prompt, bool(safety_checker)
        self.local_files_only = local_files_only
        self.n_dropped = 0
        self._pipe = None

    def config(self) -> dict[str, Any]:
        local = os.path.isdir(self.model)
        return {"backend": self.name, "model": self.model,
                "model_fingerprint": _dir_fingerprint(self.model) if local else None,
                "scheduler": self.scheduler, "steps": self.steps, "guidance_scale": self.guidance_scale,
                "height": self.height, "width": self.width, "dtype": self.dtype,
                "negative_prompt": self.negative_prompt, "safety_checker": self.safety_checker}

    @property
    def pipe(self):
        """The loaded pipeline (loaded on first access)."""
        if self._pipe is None:
            self._pipe = self._load()
        return self._pipe

    def _load(self):
        import diffusers
        import torch

        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]
        # diffusers 0.42 renamed torch_dtype -> dtype (torch_dtype still works but warns on every load)
        kw: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": self.local_files_only}
        if not self.safety_checker:
            kw.update(safety_checker=None, requires_safety_checker=False)
        log.info("loading %s (%s, %s) on %s", self.model, self.dtype, self.scheduler, self.device)
        try:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(self.model, **kw)
        except ValueError:
            # AutoPipeline only knows registered pipeline classes; fall back to the generic loader.
            pipe = diffusers.DiffusionPipeline.from_pretrained(self.model, **kw)
        sched_cls = getattr(diffusers, SCHEDULERS[self.scheduler])
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
        if self.safety_checker and getattr(pipe, "safety_checker", None) is None:
            log.info("%s has no safety checker; dropping all-black images only", self.model)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)  # replay.py shows one bar over the whole set
        return pipe

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image | None]:
        import torch

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        out: list[Image.Image | None] = []
        for lo in range(0, len(prompts), self.batch_size):
            ps, ss = list(prompts[lo:lo + self.batch_size]), seeds[lo:lo + self.batch_size]
            gens = [torch.Generator("cpu").manual_seed(int(s) & (2**63 - 1)) for s in ss]
            res = self.pipe(ps, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            height=self.height, width=self.width, generator=gens,
                            negative_prompt=[self.negative_prompt] * len(ps) if self.negative_prompt else None,
                            output_type="pil")
            flags = getattr(res, "nsfw_content_detected", None) or [False] * len(ps)
            for img, flagged in zip(res.images, flags):
                if flagged or is_black(img):
                    self.n_dropped += 1
                    out.append(None)
                else:
                    out.append(img.convert("RGB"))
        return out


# ------------------------------------------------------------------------------------------------
# a tiny pipeline for tests and benches
# ------------------------------------------------------------------------------------------------
def _tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every byte is a token (enough to drive a text encoder)."""
    from transformers import CLIPTokenizer

    # GPT-2/CLIP's printable stand-ins for the 256 bytes (the alphabet of a byte-level BPE).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars + [c + "</w>" for c in chars]:  # "</w>" marks a word's last symbol in CLIP's BPE
        vocab.setdefault(ch, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _random_sd_pipeline(out_dir: str | os.PathLike, seed: int, note: str, unet_kw: dict, vae_kw: dict,
                        text_kw: dict) -> str:
    """A randomly initialised ``StableDiffusionPipeline`` of the given sizes, ``save_pretrained`` to ``out_dir``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae_kw)
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_kw))
    # SD 1.x's scheduler settings
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out_dir = os.fspath(out_dir)
    pipe.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "TINY_RANDOM_PIPELINE.json"), "w", encoding="utf-8") as f:
        json.dump({"note": note, "seed": seed}, f)
    return out_dir


def tiny_diffusers_pipeline(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny randomly initialised ``StableDiffusionPipeline`` and ``save_pretrained`` it to ``out_dir``.

    UNet (32, 64) channels with cross-attention dim 32, a 2-level VAE (32 px images <-> 16 px latents),
    a 2-layer CLIP text encoder of width 32, a byte-level tokenizer built in code (loads offline), PNDM
    (``skip_prk_steps`` as in SD 1.x) and no safety checker. Returns the directory (as str). Images are
    noise, of course; what it exercises is the loading/scheduling/batching/seeding path.
    """
    return _random_sd_pipeline(
        out_dir, seed, "randomly initialised test pipeline (datagen.gift.backends)",
        unet_kw=dict(sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                     attention_head_dim=8, norm_num_groups=32),
        vae_kw=dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=32),
        text_kw=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))


def sd15_sized_random_pipeline(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """A randomly initialised pipeline with Stable Diffusion 1.5's architecture (for throughput benchmarks).

    UNet: SD 1.5's config (block channels 320/640/1280/1280, 2 layers per block, cross-attention 768,
    8 heads, 64 x 64 latents = 512 px images; ~860 M parameters); VAE: SD's (128/256/512/512, 4 latent
    channels); text encoder: CLIP ViT-L/14's text transformer size (768 wide, 12 layers) with the small
    tokenizer built in code (the vocabulary size does not change the cost of generation).
    """
    return _random_sd_pipeline(
        out_dir, seed, "randomly initialised SD-1.5-sized pipeline (benchmarks only)",
        unet_kw=dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                     attention_head_dim=8, norm_num_groups=32),
        vae_kw=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    norm_num_groups=32, sample_size=512),
        text_kw=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))


def backend_from_config(cfg: dict[str, Any]) -> TextToImage:
    """Build a backend from ``{"backend": "world"|"world_styled"|"diffusers", ...kwargs}`` (e.g. from a run config)."""
    cfg = dict(cfg)
    kind = cfg.pop("backend")
    cfg.pop("model_fingerprint", None)
    if kind == "world":
        return WorldT2I(**cfg)
    if kind == "world_styled":
        return StyledWorldT2I(**cfg)
    if kind == "diffusers":
        return DiffusersT2I(**cfg)
    raise ValueError(f"unknown backend {kind!r}; valid: 'world', 'world_styled', 'diffusers'")
