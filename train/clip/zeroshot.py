"""Zero-shot classification evaluation of a CLIP on classification task families.

Each family is scored over its own classes; the class embedding is the renormalised mean of the
normalised text embeddings over all of the family's templates (CLIP's template ensemble, as in the
MTIL protocol). Evaluation sets are fixed and held out (the families' ``test`` split).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from datagen.evalset import EvalSet
from models.clip import zero_shot_classifier
from train.clip import DEFAULT_EVAL_BATCH_SIZE

__all__ = ["EvalSet", "build_world_eval_sets", "eval_loader", "format_accuracy_table", "zero_shot_accuracy",
           "zero_shot_correct"]


class _TensorPairs(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def build_world_eval_sets(families: Sequence[str], n_per_class: int, seed: int, image_size: int,
                          preprocess, split: str = "test") -> list[EvalSet]:
    """Render the held-out evaluation sets of world task families (``split``: ``"test"`` or ``"val"``)
    and preprocess them once."""
    from datagen.world import build_eval_set, get_task_family

    sets = []
    for name in families:
        family = get_task_family(name)
        images, labels = build_eval_set(family, n_per_class=n_per_class, seed=seed, image_size=image_size,
                                        split=split)
        sets.append(EvalSet(name, list(family.classnames), list(family.templates),
                            torch.stack([preprocess(im) for im in images]), torch.tensor(labels)))
    return sets


def eval_loader(es: EvalSet, batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A loader over this rank's share (every world_size-th sample, no padding, so sums are exact)."""
    indices = list(range(rank, len(es.labels), world_size))
    return DataLoader(_TensorPairs(es.images, es.labels), batch_size=batch_size, sampler=indices)


@torch.no_grad()
def zero_shot_correct(model: torch.nn.Module, tokenizer, es: EvalSet, device: torch.device,
                      batch_size: int = DEFAULT_EVAL_BATCH_SIZE) -> torch.Tensor:
    """Per item of ``es`` (in its order), whether ``model``'s top-1 zero-shot prediction is right (bool);
    what interval estimates resample (single process)."""
    classifier = zero_shot_classifier(model, tokenizer, es.classnames, es.templates, device)
    out = []
    for images, labels in eval_loader(es, batch_size):
        feats = torch.nn.functional.normalize(model.encode_image(images.to(device)).float(), dim=-1)
        out.append((feats @ classifier.T).argmax(-1).cpu().eq(labels))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def zero_shot_accuracy(model: torch.nn.Module, tokenizer, es: EvalSet, device: torch.device,
                       batch_size: int = DEFAULT_EVAL_BATCH_SIZE) -> float:
    """Top-1 zero-shot accuracy of ``model`` on one evaluation set (single process)."""
    correct = zero_shot_correct(model, tokenizer, es, device, batch_size)
    return float(correct.sum()) / max(len(es.labels), 1)


def format_accuracy_table(acc: dict[str, float], title: str = "zero-shot accuracy") -> str:
    """A small fixed-width table: one row per family, then the mean."""
    width = max([len(k) for k in acc] + [6])
    lines = [title, f"{'family':<{width}}  acc (%)", "-" * (width + 10)]
    lines += [f"{k:<{width}}  {100 * v:6.1f}" for k, v in acc.items()]
    if acc:
        lines += ["-" * (width + 10), f"{'mean':<{width}}  {100 * sum(acc.values()) / len(acc):6.1f}"]
    return "\n".join(lines)
