"""The text-to-image interface every replay backend implements (``datagen.gift.backends``, ``.styled``)."""

from __future__ import annotations

from typing import Any

from PIL import Image


class TextToImage:
    """Interface: ``generate(prompts, seeds) -> list[PIL.Image | None]`` plus ``name`` and ``config()``."""

    name = "t2i"

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image | None]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able settings that determine the output (hashed into replay-set keys)."""
        return {"backend": self.name}


class RenderedT2I(TextToImage):
    """A backend that draws one image at a time and knows what it drew: subclasses implement
    ``render(prompt, seed) -> (image, description)``; batches and descriptions come from here."""

    def render(self, prompt: str, seed: int) -> tuple[Image.Image, dict]:
        raise NotImplementedError

    def generate_with_meta(self, prompts: list[str], seeds: list[int]) -> tuple[list[Image.Image], list[dict]]:
        """:meth:`generate` plus what each image shows (see :meth:`render`)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        out = [self.render(p, s) for p, s in zip(prompts, seeds)]
        return [im for im, _ in out], [m for _, m in out]

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image | None]:
        return self.generate_with_meta(prompts, seeds)[0]
