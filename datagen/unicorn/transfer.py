"""Stage 3 of Unicorn: move text embeddings into the image region of a contrastive space.

Notation (all embeddings are rows of an ``(N, D)`` tensor):

* ``u`` -- L2-normalised text embeddings of captions (the caller normalises: the encoder's output);
* ``μ_T`` -- mean of ``u`` over the caption corpus (:class:`StreamingMean` for streams);
* ``v`` -- L2-normalised real image embeddings, ``μ_V`` their mean;
* ``Norm(x) = x / ‖x‖`` row-wise.

Modes of :func:`modality_transfer` (the paper's ablation plus the authors' ReAlign variant):

=====================  ====================================================================
``raw``                ``v̂ = u``                                 ("no transfer")
``mean_shift``         ``v̂ = u − μ_T``                           (Unicorn's default)
``mean_shift_noise``   ``v̂ = u − μ_T + ε,  ε ~ N(0, σ² I)``
``ideal``              ``v̂ = u − μ_T + μ_V``                     (needs real images' mean)
``realign``            see :func:`realign_steps`                  (unpaired real images)
=====================  ====================================================================

``renormalize=True`` applies ``Norm`` to the result of the first four modes (the paper writes
``Norm(u − μ)``; the authors' code does not renormalise, hence a switch defaulting to False).
``realign`` always returns unit vectors (its definition ends with a renormalisation).

Test time (:func:`center_image_embeddings`): ``v̂ = Norm(v) − μ_ref`` with ``μ_ref`` the mean
normalised image embedding of a reference pool (the paper: the evaluation set's own mean), which
puts real images in the same centred frame as ``u − μ_T``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MODES = ("raw", "mean_shift", "mean_shift_noise", "ideal", "realign")


def _need(value: Any, name: str, mode: str) -> Any:
    if value is None:
        raise ValueError(f"modality_transfer(mode={mode!r}) needs `{name}`")
    return value


def _as_vec(mean: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """A mean vector on ``like``'s device/dtype, checked against its last dimension."""
    mean = torch.as_tensor(mean).to(device=like.device, dtype=like.dtype)
    if mean.shape != like.shape[-1:]:
        raise ValueError(f"`{name}` has shape {tuple(mean.shape)}, expected ({like.shape[-1]},)")
    return mean


def realign_scale(centred_text: torch.Tensor, image_emb: torch.Tensor,
                  image_mean: torch.Tensor) -> float:
    """``s = sqrt(mean_j ‖v_j − μ_V‖² / mean_i ‖u_i − μ_T‖²)``; ``centred_text`` holds ``u_i − μ_T``.

    Matches the spread (root mean squared distance to the centre) of the shifted text cloud to the
    image cloud's, so that after translation by ``μ_V`` the two clouds have the same radius.
    """
    num = (image_emb.double() - image_mean.double()).pow(2).sum(-1).mean()
    den = centred_text.double().pow(2).sum(-1).mean()
    if den <= 0:
        raise ValueError("realign: the text batch has zero spread around text_mean (all u == μ_T)")
    return float(torch.sqrt(num / den))


def realign_steps(text_emb: torch.Tensor, text_mean: torch.Tensor, *, image_emb: torch.Tensor | None = None,
                  image_mean: torch.Tensor | None = None, scale: float | None = None) -> dict[str, Any]:
    """ReAlign, step by step (our reading of the spec line, documented because it is terse).

    1. scale and translate, then project onto the sphere::

           ê_i = Norm((u_i − μ_T) · s + μ_V)

       with ``s`` from :func:`realign_scale` over *this text batch* and ``image_emb`` (unpaired real
       image embeddings), unless a precomputed corpus-level ``scale`` is passed (do that for small
       stream batches, where a batch estimate of ``mean‖u − μ_T‖²`` is noisy);
    2. re-centre: normalising moved the cloud's mean off ``μ_V`` (a cloud on the sphere has a mean
       of norm < 1), so shift it back over the batch::

           c_i = ê_i − mean_j(ê_j) + μ_V          (so mean_i c_i = μ_V exactly)

    3. renormalise: ``out_i = Norm(c_i)``.

    ``μ_V`` is ``image_mean`` when given, else the mean of ``image_emb``. Step 2 averages over the
    batch, so the batch needs >= 2 rows (with one row, ``c = μ_V`` for every input).
    Returns ``{"scale", "image_mean", "normalised" (ê), "centred" (c), "out"}``.
    """
    mode = "realign"
    text_mean = _need(text_mean, "text_mean", mode)
    if text_emb.dim() != 2 or text_emb.shape[0] < 2:
        raise ValueError(f"realign needs a (N >= 2, D) batch of text embeddings (it re-centres over the batch), "
                         f"got shape {tuple(text_emb.shape)}")
    if image_mean is None:
        image_mean = _need(image_emb, "image_emb (or image_mean with a precomputed scale)", mode).mean(0)
    mu_t = _as_vec(text_mean, text_emb, "text_mean")
    mu_v = _as_vec(image_mean, text_emb, "image_mean")
    centred_text = text_emb - mu_t
    if scale is None:
        image_emb = _need(image_emb, "image_emb (or a precomputed scale)", mode)
        scale = realign_scale(centred_text, image_emb.to(text_emb), mu_v)
    normalised = F.normalize(centred_text * scale + mu_v, dim=-1)
    centred = normalised - normalised.mean(0) + mu_v
    return {"scale": float(scale), "image_mean": mu_v, "normalised": normalised, "centred": centred,
            "out": F.normalize(centred, dim=-1)}


def modality_transfer(text_emb: torch.Tensor, mode: str, *, text_mean: torch.Tensor | None = None,
                      image_mean: torch.Tensor | None = None, image_emb: torch.Tensor | None = None,
                      noise_std: float = 0.0, renormalize: bool = False,
                      generator: torch.Generator | None = None, scale: float | None = None) -> torch.Tensor:
    """Synthetic image embeddings ``v̂`` from text embeddings ``u`` (``(..., D)``; realign: ``(N, D)``).

    See the module docstring for the formulas of each ``mode``. Needs: ``text_mean`` for every mode
    but ``raw``; ``image_mean`` for ``ideal``; ``image_emb`` (or ``image_mean`` + ``scale``) for
    ``realign``; ``noise_std`` (σ >= 0) and optionally a seeded ``generator`` for
    ``mean_shift_noise``. ``scale`` (realign only, an addition to the spec's signature) is a
    precomputed ``s``. Missing arguments and unknown modes raise ``ValueError``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown modality_transfer mode {mode!r}; choose one of {MODES}")
    if mode == "realign":
        return realign_steps(text_emb, text_mean, image_emb=image_emb, image_mean=image_mean, scale=scale)["out"]
    out = text_emb
    if mode != "raw":
        out = text_emb - _as_vec(_need(text_mean, "text_mean", mode), text_emb, "text_mean")
    if mode == "mean_shift_noise":
        if noise_std is None or noise_std < 0:
            raise ValueError(f"modality_transfer(mode='mean_shift_noise') needs `noise_std` >= 0, got {noise_std}")
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        out = out + noise_std * noise
    if mode == "ideal":
        out = out + _as_vec(_need(image_mean, "image_mean", mode), text_emb, "image_mean")
    return F.normalize(out, dim=-1) if renormalize else out


class StreamingMean:
    """Running mean of ``D``-dim vectors: ``mean = (Σ_i x_i) / n``, summed in float64.

    float64 because a corpus mean over millions of rows summed in float32 loses ~3 digits; ``mean``
    is returned as float32 (the embeddings' usual dtype). ``update`` takes ``(N, D)`` or ``(D,)``.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self._sum = torch.zeros(self.dim, dtype=torch.float64)
        self.count = 0

    def update(self, batch: torch.Tensor) -> "StreamingMean":
        batch = torch.as_tensor(batch).detach().to("cpu", torch.float64).reshape(-1, batch.shape[-1])
        if batch.shape[-1] != self.dim:
            raise ValueError(f"StreamingMean(dim={self.dim}) got vectors of size {batch.shape[-1]}")
        self._sum += batch.sum(0)
        self.count += batch.shape[0]
        return self

    def add(self, total: torch.Tensor, count: int) -> "StreamingMean":
        """Fold in ``count`` vectors given by their ``total`` (``(D,)``, their sum): what a reduction over
        several processes produces (the summed sums and counts of every rank)."""
        total = torch.as_tensor(total).detach().to("cpu", torch.float64).reshape(-1)
        if total.shape[0] != self.dim:
            raise ValueError(f"StreamingMean(dim={self.dim}) got a sum of size {total.shape[0]}")
        if int(count) < 0:
            raise ValueError(f"StreamingMean.add: count must be >= 0, got {count}")
        self._sum += total
        self.count += int(count)
        return self

    @property
    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("StreamingMean.mean: no vectors seen yet")
        return (self._sum / self.count).float()

    def state_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "sum": self._sum.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["dim"]) != self.dim:
            raise ValueError(f"StreamingMean(dim={self.dim}) cannot load a state of dim {state['dim']}")
        self._sum = torch.as_tensor(state["sum"], dtype=torch.float64).clone()
        self.count = int(state["count"])


def gap_diagnostics(text_emb: torch.Tensor, image_emb: torch.Tensor, eps: float = 1e-12) -> dict[str, float]:
    """Modality-gap statistics of paired embeddings (row i of each is one image–caption pair).

    ``Δ_i = v_i − u_i``, ``Δ̄ = mean_i Δ_i``; returns

    * ``gap_norm``     = ``‖Δ̄‖``                      (size of the constant part of the gap);
    * ``mean_cos``     = ``mean_i cos(Δ_i, Δ̄)``        (1 when every pair is off by the same direction);
    * ``energy_ratio`` = ``‖Δ̄‖² / mean_i ‖Δ_i‖²``      (share of the gap a constant shift explains;
      ≈ 0.11 for the paper's encoder);
    * ``n`` pairs.

    Inputs are used as given (pass L2-normalised embeddings, as the spec defines the gap on them).
    """
    if text_emb.shape != image_emb.shape or text_emb.dim() != 2:
        raise ValueError(f"gap_diagnostics needs paired (N, D) tensors, got {tuple(text_emb.shape)} "
                         f"and {tuple(image_emb.shape)}")
    delta = image_emb.double() - text_emb.double()
    mean_delta = delta.mean(0)
    cos = F.cosine_similarity(delta, mean_delta.expand_as(delta), dim=-1, eps=eps)
    energy = delta.pow(2).sum(-1).mean()
    return {"gap_norm": float(mean_delta.norm()), "mean_cos": float(cos.mean()),
            "energy_ratio": float(mean_delta.pow(2).sum() / energy.clamp_min(eps)), "n": int(delta.shape[0])}


def center_image_embeddings(image_emb: torch.Tensor, reference_mean: torch.Tensor) -> torch.Tensor:
    """Test-time input of a Unicorn VLM: ``Norm(v) − μ_ref``.

    ``reference_mean`` is the mean of the *normalised* image embeddings of a reference pool (the
    paper uses the evaluation set itself; ``StreamingMean`` over ``Norm(v)`` computes it).
    """
    normed = F.normalize(image_emb, dim=-1)
    return normed - _as_vec(reference_mean, normed, "reference_mean")
