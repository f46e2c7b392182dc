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
