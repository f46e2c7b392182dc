"""The EWC baseline's importance: a diagonal Fisher of the previous task, from many of its samples.

EWC (Kirkpatrick et al., PNAS 2017) protects the weights that mattered for the tasks learned so far,
weighting ``(theta - theta_{t-1})^2`` by the diagonal Fisher information of the previous task at
``theta_{t-1}``. Here (``docs/gift.md``, "EWC"):

* before task ``t >= 1``, the model that finished task ``t-1`` (eval mode: BatchNorm running statistics)
  scores ``n_samples`` training images of task ``t-1``, drawn from its training stream with a fixed seed
  (the same images whether the run is resumed or not);
* per image, the gradient of ``log p(y | x)`` of the zero-shot classifier over that task's class prompts
  (first template, the task loss's own classifier, at the run's fixed logit scale), with ``y`` sampled
  from the model's own prediction: the true Fisher, not the empirical one (Martens 2020; with ``y`` the
  label the squared gradients of well-fit images vanish);
* ``F = mean_i g_i^2`` per parameter, then per-tensor mean-normalised as AWC's importance is, so that the
  same ``lambda`` means the same strength for EWC and GIFT's AWC.

Task 0 has no previous task (the pre-training data is not the method's to use), so EWC adds no penalty
there. The estimate costs ``n_samples`` backward passes of batch one (about 10 s for 256 on the toy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from train.gift.losses import EwcFisherAccumulator, clip_logits
from train.core.modes import eval_mode


def fisher_importance(model: torch.nn.Module, tokenizer: Any, task: Any, class_prompts: list[str],
                      preprocess: Any, *, n_samples: int, seed: int, scale: float,
                      device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Mean-normalised diagonal Fisher of ``task`` (a generator of ``{"image", "label"}``) at ``model``."""
    device = device or torch.device("cpu")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = EwcFisherAccumulator()
    tokens = tokenizer(class_prompts).to(device)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF15E]))
    label_rng = torch.Generator().manual_seed(int(seed))
    with eval_mode(model):
        model.to(device)
        for i in range(int(n_samples)):
            sample = task.generate(np.random.default_rng(rng.integers(2**63)), i)
            image = preprocess(sample["image"]).unsqueeze(0).to(device)
            model.zero_grad(set_to_none=True)
            logits = clip_logits(model.encode_image(image), model.encode_text(tokens), scale)
            log_p = torch.log_softmax(logits.float(), dim=-1)[0]
            y = int(torch.multinomial(log_p.detach().exp().cpu(), 1, generator=label_rng))
            log_p[y].backward()
            acc.add({n: p.grad for n, p in params.items()})
        model.zero_grad(set_to_none=True)
        model.cpu()
    return acc.finalize(params=params)
