"""Vision-Zero's policy-gradient loss and the named cross-rank reduction of its step metrics.

Pure tensor functions (no Lightning): :func:`policy_loss` is ``-mean(A * log pi) + tau * KL`` over the
generated tokens, the KL by the k3 estimator (spec: ``docs/specs/visionzero.md``, "Optimisation").
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from train.visionzero.config import KL_COEF

__all__ = ["all_reduce_sum", "k3_kl", "policy_loss"]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) on samples of π_θ: exp(r) − r − 1 with r = ref − logp (≥ 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def policy_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
                kl_coef: float = KL_COEF, agg: str = "seq_mean") -> tuple[torch.Tensor, dict[str, float]]:
    """``−mean(A · log π) + τ · KL`` over generated tokens (EOS included; ``mask`` marks them).

    ``logp`` and ``ref_logp`` must be scored at the temperature the tokens were sampled at (the
    trainer passes ``generation.temperature`` to ``policy.logprobs``): the k3 estimator assumes samples
    of the distribution ``logp`` describes.

    ``agg="seq_mean"`` (default, GRPO's): mean over each sequence's tokens, then over sequences;
    ``"token_mean"``: one mean over every generated token of the batch.
    """
    kl = k3_kl(logp, ref_logp.detach())
    pg = adv.unsqueeze(1) * logp
    if agg == "seq_mean":
        n = mask.sum(1).clamp(min=1)
        pg_term = ((pg * mask).sum(1) / n).mean()
        kl_term = ((kl * mask).sum(1) / n).mean()
    elif agg == "token_mean":
        n = mask.sum().clamp(min=1)
        pg_term, kl_term = (pg * mask).sum() / n, (kl * mask).sum() / n
    else:
        raise ValueError(f"agg must be 'seq_mean' or 'token_mean', got {agg!r}")
    loss = -pg_term + kl_coef * kl_term
    return loss, {"pg": float(pg_term.detach()), "kl": float(kl_term.detach())}


def all_reduce_sum(values: dict[str, float | torch.Tensor], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum named scalars over all ranks: one float64 tensor, ONE ``all_reduce``, back to a dict by name.

    The names are sorted, so every rank stacks them in the same order whatever order it built the dict
    in. Without an initialised process group the values come back unchanged (as floats).
    """
    names = sorted(values)
    t = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).reshape(()) for k in names]).to(device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return dict(zip(names, t.tolist()))
