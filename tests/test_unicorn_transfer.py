"""Unicorn stage 3 (modality transfer) against hand-computed values on tiny vectors."""

from __future__ import annotations

import math

import pytest
import torch

from datagen.unicorn import (StreamingMean, center_image_embeddings, gap_diagnostics, modality_transfer,
                             realign_steps)

U = torch.tensor([[1.0, 0.0]])
MU_T = torch.tensor([0.5, 0.5])


def test_raw_and_mean_shift():
    assert torch.equal(modality_transfer(U, "raw"), U)
    assert torch.allclose(modality_transfer(torch.tensor([[3.0, 4.0]]), "raw", renormalize=True),
                          torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(modality_transfer(U, "mean_shift", text_mean=MU_T), torch.tensor([[0.5, -0.5]]))
    r = 1 / math.sqrt(2)
    assert torch.allclose(modality_transfer(U, "mean_shift", text_mean=MU_T, renormalize=True),
                          torch.tensor([[r, -r]]))
    # (D,) input works too
    assert torch.allclose(modality_transfer(U[0], "mean_shift", text_mean=MU_T), torch.tensor([0.5, -0.5]))


def test_ideal_adds_image_mean():
    out = modality_transfer(U, "ideal", text_mean=MU_T, image_mean=torch.tensor([0.0, 1.0]))
    assert torch.allclose(out, torch.tensor([[0.5, 0.5]]))


def test_noise_is_seeded_and_has_the_right_std():
    u = torch.zeros(20000, 3)
    kw = dict(text_mean=torch.zeros(3), noise_std=0.1)
    a = modality_transfer(u, "mean_shift_noise", generator=torch.Generator().manual_seed(1), **kw)
    b = modality_transfer(u, "mean_shift_noise", generator=torch.Generator().manual_seed(1), **kw)
    c = modality_transfer(u, "mean_shift_noise", generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.std().item() - 0.1) < 0.003 and abs(a.mean().item()) < 0.003
    # σ = 0 is exactly the mean shift
    assert torch.equal(modality_transfer(U, "mean_shift_noise", text_mean=MU_T, noise_std=0.0),
                       modality_transfer(U, "mean_shift", text_mean=MU_T))


def test_realign_by_hand():
    u = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mu_t = torch.tensor([0.5, 0.5, 0.0])
    v = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])  # unpaired real images, μ_V = [0.3, 0, 0.9]
    # mean‖v − μ_V‖² = 0.1, mean‖u − μ_T‖² = 0.5  ->  s = sqrt(0.2)
    s = math.sqrt(0.2)
    mu_v = torch.tensor([0.3, 0.0, 0.9])
    pre = torch.tensor([[0.5 * s + 0.3, -0.5 * s, 0.9], [-0.5 * s + 0.3, 0.5 * s, 0.9]])
    e_hat = pre / pre.norm(dim=1, keepdim=True)
    centred = e_hat - e_hat.mean(0) + mu_v
    expected = centred / centred.norm(dim=1, keepdim=True)

    steps = realign_steps(u, mu_t, image_emb=v)
    assert steps["scale"] == pytest.approx(s, rel=1e-6)
    assert torch.allclose(steps["normalised"], e_hat, atol=1e-6)
    assert torch.allclose(steps["centred"].mean(0), mu_v, atol=1e-6)  # centred on μ_V before renormalising
    out = modality_transfer(u, "realign", text_mean=mu_t, image_emb=v)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-6)
    # a precomputed corpus-level scale gives the same result
    same = modality_transfer(u, "realign", text_mean=mu_t, image_mean=mu_v, scale=s)
    assert torch.allclose(same, expected, atol=1e-6)


@pytest.mark.parametrize("mode,kwargs,missing", [
    ("mean_shift", {}, "text_mean"),
    ("mean_shift_noise", {"noise_std": 0.1}, "text_mean"),
    ("ideal", {"text_mean": MU_T}, "image_mean"),
    ("realign", {"image_emb": torch.eye(2)}, "text_mean"),
    ("realign", {"text_mean": MU_T}, "image_emb"),
])
def test_missing_arguments_are_named(mode, kwargs, missing):
    with pytest.raises(ValueError, match=missing):
        modality_transfer(torch.eye(2), mode, **kwargs)


def test_unknown_mode_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown"):
        modality_transfer(U, "shift")
    with pytest.raises(ValueError, match="shape"):
        modality_transfer(U, "mean_shift", text_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="N >= 2"):
        modality_transfer(U, "realign", text_mean=MU_T, image_emb=torch.eye(2))


def test_streaming_mean_matches_torch_and_round_trips():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 4, generator=g) for n in (3, 7, 1, 12)]
    m = StreamingMean(4)
    for b in batches[:2]:
        m.update(b)
    resumed = StreamingMean(4)
    resumed.load_state_dict(m.state_dict())
    for b in batches[2:]:
        m.update(b)
        resumed.update(b)
    full = torch.cat(batches).double().mean(0).float()
    assert m.count == resumed.count == 23
    assert torch.allclose(m.mean, full, atol=1e-6) and torch.equal(m.mean, resumed.mean)
    m.update(torch.ones(4))  # a single (D,) vector
    assert m.count == 24
    with pytest.raises(ValueError):
        m.update(torch.ones(2, 5))
    with pytest.raises(RuntimeError):
        StreamingMean(2).mean


def test_gap_diagnostics_constant_offset():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=-1)
    c = torch.tensor([0.1, -0.2, 0.3])
    d = gap_diagnostics(u, u + c)
    assert d["gap_norm"] == pytest.approx(c.norm().item(), rel=1e-6)
    assert d["mean_cos"] == pytest.approx(1.0, abs=1e-6)
    assert d["energy_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert d["n"] == 6
    # opposite per-pair offsets cancel: no constant gap at all
    d = gap_diagnostics(u[:2], u[:2] + torch.stack([c, -c]))
    assert d["gap_norm"] == pytest.approx(0.0, abs=1e-7) and d["energy_ratio"] == pytest.approx(0.0, abs=1e-7)


def test_center_image_embeddings():
    out = center_image_embeddings(torch.tensor([[3.0, 4.0]]), torch.tensor([0.6, 0.0]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.8]]))
