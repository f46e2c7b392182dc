"""Collating per-sample dicts into batches (the DataLoader's ``collate_fn`` and :mod:`.filtering`'s re-batching)."""

from __future__ import annotations

from typing import Any

import torch


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dicts: tensors and numbers are stacked, everything else (strings, dicts) becomes a list."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
