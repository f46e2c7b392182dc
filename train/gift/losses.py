"""Loss and regulariser math for GIFT continual fine-tuning of CLIP, plus the shared-loop baselines.

Source: "Synthetic Data is an Elegant GIFT for Continual Vision-Language Models" (CVPR 2025,
arXiv 2503.04229), as summarised in ``docs/specs/gift.md`` (which follows the authors' code).

Everything here is a pure function of tensors: no modules, no optimizer, no Lightning. The training
loop owns the order of backward passes; the AWC recipe from the spec is

1. ``loss_syn = contrastive_distillation(S, S_T) + beta * image_text_alignment(S, ids)``; backward;
2. ``F = awc_importance({n: p.grad for n, p in named_params}, params=...)`` (before any zeroing);
3. ``(task_loss(...) + awc_penalty(params, anchor, F, lam)).backward()`` on top; one optimizer step.

Notation: ``S`` / ``S_T`` are the student / teacher B×B logit matrices over the B synthetic pairs,
``100 · norm(image feats) · norm(text feats)ᵀ`` (rows = images, columns = prompts).

Numerics: everything is evaluated in at least float32 (fp16/bf16 inputs are upcast, float64 is
kept) so that half-precision logits under autocast do not lose precision in log-softmax and in the
sums; gradients still flow to the original tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

#: Importance given to tensors that must not be anchored: no gradient, all-zero gradient, logit_scale.
AWC_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------
# Logits and soft cross-entropy
# ---------------------------------------------------------------------------------------------


def _up(x: Tensor) -> Tensor:
    """Upcast half-precision tensors to float32; float32/float64 pass through (keeps double for tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def clip_logits(image_features: Tensor, text_features: Tensor, scale: float | Tensor = 100.0) -> Tensor:
    """CLIP similarity logits ``scale · norm(f) · norm(g)ᵀ``.

    Args:
        image_features: (N, D) image embeddings (unnormalised is fine).
        text_features: (M, D) text embeddings.
        scale: the logit scale; GIFT freezes it at 100 (spec, "Per task t").

    Returns:
        (N, M) logits; row i = image i, column j = text j.
    """
    f = F.normalize(image_features, dim=-1)
    g = F.normalize(text_features, dim=-1)
    return scale * f @ g.t()


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with a soft target distribution, averaged over rows.

    ``CE_soft(x, p) = (1/N) Σ_i Σ_j −p_ij · log_softmax(x)_ij`` (spec, loss 2).

    Args:
        logits: (N, C) logits ``x``.
        targets: (N, C) target distributions ``p`` (rows sum to 1); used as given, not detached here.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    logp = F.log_softmax(_up(logits), dim=-1)
    return -(_up(targets) * logp).sum(dim=-1).mean()


def _check_square(name: str, x: Tensor) -> None:
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square B×B logit matrix, got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# GIFT losses
# ---------------------------------------------------------------------------------------------


def contrastive_distillation(student_logits: Tensor, teacher_logits: Tensor, T: float = 2.0) -> Tensor:
    """Bidirectional contrastive distillation of the teacher's B×B logits (GIFT loss 2).

    ``L_CD = T² · [ CE_soft(S/T, softmax(S_T/T)) + CE_soft(Sᵀ/T, softmax(S_Tᵀ/T)) ]``

    (gift.md, "Losses" 2; weight 1, T = 2). The first term distils image→text rows, the second
    text→image rows. The teacher is detached: no gradient reaches ``teacher_logits``.

    Note: this is a soft cross-entropy, not a KL, so its minimum (at ``S = S_T``) is the teacher's
    entropy × T², not 0; the gradient w.r.t. ``S`` is zero there. The T² factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al.).
    """
    _check_square("student_logits", student_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher {tuple(teacher_logits.shape)} vs student {tuple(student_logits.shape)}")
    s = _up(student_logits) / T
    t = _up(teacher_logits.detach()) / T
    i2t = soft_cross_entropy(s, F.softmax(t, dim=-1))
    t2i = soft_cross_entropy(s.t(), F.softmax(t.t(), dim=-1))
    return (T * T) * (i2t + t2i)


def same_prompt_targets(prompt_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Row-normalised "same prompt" matrix ``M_ij = [id_i = id_j] / #{k : id_k = id_i}``.

    With all ids distinct this is the identity; images sharing a prompt split the target mass
    evenly over each other's texts (gift.md: "two images with the same prompt share a label").
    The indicator is symmetric and its row count for i equals its column count for i, so the same
    M serves the transposed (text→image) direction. Returned in ``dtype`` (float32 default), no grad.
    """
    return _row_normalise(_same_prompt(prompt_ids), dtype)


def _same_prompt(prompt_ids: Tensor) -> Tensor:
    """Bool indicator ``[id_i = id_j]`` over a batch's prompt ids."""
    ids = prompt_ids.reshape(-1)
    return ids[:, None] == ids[None, :]


def _row_normalise(positives: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool positives matrix as soft targets: each row's positives share its mass evenly."""
    pos = positives.to(dtype)
    return pos / pos.sum(dim=1, keepdim=True)


def image_text_alignment(logits: Tensor, prompt_ids: Tensor, label_smoothing: float = 0.2,
                         also_true: Tensor | None = None) -> Tensor:
    """Image–text alignment on the synthetic pairs (GIFT loss 3), unweighted.

    ``L = CE(S, M; ε) + CE(Sᵀ, Mᵀ; ε)`` with the smoothed soft target ``(1 − ε)·M + ε/B`` and
    ``CE(x, q) = mean_i Σ_j −q_ij log_softmax(x)_ij`` (gift.md, "Losses" 3; ε = 0.2, temperature 1).
    ``M`` is :func:`same_prompt_targets`. The caller multiplies by β (0.25 in the spec).

    When all prompt ids differ this equals ``F.cross_entropy(S, arange(B), label_smoothing=ε)`` plus
    the same for ``Sᵀ`` (torch smooths hard labels with the same ``ε/B`` rule).

    ``also_true`` (B×B bool, rows = images, columns = texts; not in the spec) adds positives: pairs
    whose text truthfully describes the image although it is another prompt (the toy world knows
    them: ``ita_targets: describes``). Each direction's indicator is then row-normalised on its own.
    """
    _check_square("logits", logits)
    B = logits.shape[0]
    if prompt_ids.numel() != B:
        raise ValueError(f"need one prompt id per row: {prompt_ids.numel()} ids for a {B}×{B} matrix")
    pos = _same_prompt(prompt_ids.to(logits.device))
    if also_true is not None:
        if also_true.shape != (B, B):
            raise ValueError(f"also_true must be {B}×{B}, got {tuple(also_true.shape)}")
        pos = pos | also_true.to(logits.device).bool()
    dtype = _up(logits).dtype
    M, Mt = _row_normalise(pos, dtype), _row_normalise(pos.t(), dtype)  # Mt = M for same-prompt only
    q, qt = ((1.0 - label_smoothing) * m + label_smoothing / B for m in (M, Mt))
    return soft_cross_entropy(logits, q) + soft_cross_entropy(logits.t(), qt)


def task_loss(image_features: Tensor, class_text_features: Tensor, labels: Tensor,
              logit_scale: float | Tensor = 100.0, label_smoothing: float = 0.2) -> Tensor:
    """Supervised task loss (GIFT loss 1).

    ``CE(logit_scale · norm(f(x)) · norm(g(class prompts))ᵀ, y; label smoothing ε)`` with
    ``F.cross_entropy`` semantics (target ``(1 − ε)·onehot + ε/C``), mean over the batch
    (gift.md, "Losses" 1: ε = 0.2, scale 100).
    """
    logits = clip_logits(image_features, class_text_features, logit_scale)
    return F.cross_entropy(_up(logits), labels, label_smoothing=label_smoothing)


def lwf_distillation(student_logits: Tensor, teacher_logits: Tensor, T: float = 2.0) -> Tensor:
    """Learning-without-Forgetting distillation on the current task's images (LwF baseline).

    ``L_LwF = T² · CE_soft(S/T, softmax(S_T/T))``, one direction (rows = images, columns = the
    classes the logits were computed over), teacher detached. Source: Li & Hoiem, "Learning
    without Forgetting" (TPAMI 2017), with the Hinton T² scaling used for CD here.

    We use soft cross-entropy rather than KL: they differ by the teacher's entropy, a constant
    w.r.t. the student, so the gradients are identical; only the logged value is offset.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"need equal 2-D shapes, got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)}")
    s = _up(student_logits) / T
    t = _up(teacher_logits.detach()) / T
    return (T * T) * soft_cross_entropy(s, F.softmax(t, dim=-1))


# ---------------------------------------------------------------------------------------------
# Weight consolidation: AWC (GIFT), l2, static EWC
# ---------------------------------------------------------------------------------------------


def _floor_like(name: str, like: Tensor | None, params: Mapping[str, Tensor] | None) -> Tensor:
    """A tensor of ``AWC_FLOOR`` shaped like ``like`` or ``params[name]``; a 0-d tensor if neither is known."""
    # float32 is plenty for a constant 1e-6; awc_penalty casts to the parameter's compute dtype.
    ref = like if like is not None else (params.get(name) if params is not None else None)
    if ref is None:
        # Shape unknown: a 0-d tensor broadcasts against any parameter in awc_penalty.
        return torch.tensor(AWC_FLOOR, dtype=torch.float32)
    return torch.full(ref.shape, AWC_FLOOR, dtype=torch.float32, device=ref.device)


def _mean_normalise(name: str, sq: Tensor | None, params: Mapping[str, Tensor] | None) -> Tensor:
    """``sq / mean(sq)`` per tensor, with the floor for logit_scale, missing and all-zero tensors."""
    if "logit_scale" in name or sq is None:
        # Spec: logit_scale is frozen in GIFT and gets F = 1e-6; tensors without gradient likewise.
        return _floor_like(name, sq, params)
    m = sq.mean()
    # All-zero gradient (an unused tensor): mean 0 would give 0/0 = NaN; treat it as "no gradient"
    # and use the floor. torch.where instead of `if m == 0` avoids a host-device sync per tensor
    # per step. Non-finite means are deliberately not masked: inf/NaN gradients then make the
    # penalty non-finite, which an AMP GradScaler detects and skips the step, as without AWC.
    return torch.where(m == 0, torch.full_like(sq, AWC_FLOOR), sq / m)


def awc_importance(grads: Mapping[str, Tensor | None], *,
                   params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Adaptive weight-consolidation importance from the current synthetic-loss gradients.

    ``F_k = g_k² / mean(g_k²)`` per parameter tensor k, detached (gift.md, "Losses" 4; recomputed
    every step from the gradients of ``L_CD + L_ITA``). Each tensor's importance has mean 1, so the
    penalty weighs tensors equally regardless of their gradient scale; it is also invariant to a
    uniform gradient scale (e.g. an AMP loss scale cancels).

    Floors (value ``AWC_FLOOR`` = 1e-6): keys containing ``"logit_scale"`` (spec), ``None`` gradients
    (spec) and all-zero gradients (guard against 0/0; we treat them as "no gradient").

    Shape of a floored entry: the gradient's shape if there is one; else ``params[name]``'s shape if
    ``params`` is given (recommended: pass ``dict(model.named_parameters())``); else a 0-d float32
    tensor, which broadcasts in :func:`awc_penalty` to the same result.

    Returned tensors are at least float32 (squares of fp16 gradients overflow/underflow easily).
    """
    out: dict[str, Tensor] = {}
    for name, g in grads.items():
        sq = None if g is None else _up(g.detach()).pow(2)
        out[name] = _mean_normalise(name, sq, params)
    return out


def l2_importance(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Uniform importance ``F ≡ 1`` for the "l2" weight-consolidation baseline (gift.md, "Baselines").

    With :func:`awc_penalty` this gives ``λ · Σ ‖θ − θ_{t−1}‖²``. Unlike AWC, logit_scale is not
    floored: it is frozen in these runs, so its term is constant 0 anyway.
    """
    return {n: torch.ones(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}


class EwcFisherAccumulator:
    """Running sum of squared gradients over batches for the static EWC baseline.

    Call :meth:`add` with each batch's gradient dict at the start of a task, then :meth:`finalize`.
    A ``None`` gradient counts as a zero gradient for that batch (the parameter was unused).
    """

    def __init__(self) -> None:
        self._sum: dict[str, Tensor | None] = {}
        self.batches = 0

    def add(self, grads: Mapping[str, Tensor | None]) -> None:
        """Accumulate ``g²`` (at least float32, detached) of one batch."""
        self.batches += 1
        for name, g in grads.items():
            prev = self._sum.get(name)
            if g is None:
                self._sum.setdefault(name, None)
                continue
            sq = _up(g.detach()).pow(2)
            self._sum[name] = sq if prev is None else prev + sq

    def finalize(self, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Diagonal empirical Fisher ``mean_b g_b²``, then per-tensor mean-normalised as in AWC.

        ``F_k = Fish_k / mean(Fish_k)`` with ``Fish_k = (1/B) Σ_b g_{b,k}²`` (Kirkpatrick et al.,
        PNAS 2017, diagonal Fisher; normalisation and floors as :func:`awc_importance` so that λ
        means the same thing for EWC and AWC).
        """
        if self.batches == 0:
            raise ValueError("no batches accumulated")
        out: dict[str, Tensor] = {}
        for name, s in self._sum.items():
            mean_sq = None if s is None else s / self.batches
            out[name] = _mean_normalise(name, mean_sq, params)
        return out


def ewc_importance_from_grads(grad_dicts: Iterable[Mapping[str, Tensor | None]], *,
                              params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Static EWC importance from a list of per-batch gradient dicts.

    ``F_k = Fish_k / mean(Fish_k)``, ``Fish_k = (1/B) Σ_b g_{b,k}²`` (see
    :meth:`EwcFisherAccumulator.finalize`). Estimated once at the start of a task (gift.md, "Baselines").
    """
    acc = EwcFisherAccumulator()
    for g in grad_dicts:
        acc.add(g)
    return acc.finalize(params)


def awc_penalty(params: Mapping[str, Tensor], anchor: Mapping[str, Tensor],
                importance: Mapping[str, Tensor], lam: float = 1.0) -> Tensor:
    """Weighted quadratic anchor penalty ``λ · Σ_k Σ_elements F_k ⊙ (θ_k − θ_anchor,k)²``.

    Plain sum: no ½ and no normalisation by element count (gift.md, "Losses" 4; λ = 1). The
    gradient is ``2λ F_k ⊙ (θ_k − θ_anchor,k)`` into ``params`` only: anchor and importance are
    detached. Summed over the keys of ``params``; each needs an entry in ``anchor`` and ``importance``
    (a 0-d importance broadcasts). Computed in at least float32.
    """
    total: Tensor | None = None
    for name, p in params.items():
        if name not in anchor or name not in importance:
            raise KeyError(f"parameter {name!r} has no anchor or importance entry")
        pf = _up(p)
        a = anchor[name].detach().to(device=p.device, dtype=pf.dtype)
        f = importance[name].detach().to(device=p.device, dtype=pf.dtype)
        term = (f * (pf - a).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), dtype=torch.float32)
    return lam * total
