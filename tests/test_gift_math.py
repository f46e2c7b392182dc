"""Golden-number tests for the GIFT loss and regulariser math (train/gift/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.gift.losses import (
    AWC_FLOOR,
    EwcFisherAccumulator,
    awc_importance,
    awc_penalty,
    clip_logits,
    contrastive_distillation,
    ewc_importance_from_grads,
    image_text_alignment,
    l2_importance,
    lwf_distillation,
    same_prompt_targets,
    task_loss,
)


@pytest.fixture(autouse=True)
def _float64():
    # float64 for tight tolerances on golden numbers; restored so other test modules are unaffected.
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(prev)


# ---- independent reference implementations (plain Python loops, no torch softmax) -------------

def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _softmax_row(row: list[float]) -> list[float]:
    return [math.exp(v) for v in _log_softmax_row(row)]


def _loop_cd(S: list[list[float]], ST: list[list[float]], T: float) -> float:
    n = len(S)
    total = 0.0
    for transpose in (False, True):
        get = (lambda M, i, j: M[j][i]) if transpose else (lambda M, i, j: M[i][j])
        acc = 0.0
        for i in range(n):
            s_row = [get(S, i, j) / T for j in range(n)]
            p = _softmax_row([get(ST, i, j) / T for j in range(n)])
            ls = _log_softmax_row(s_row)
            acc += -sum(p[j] * ls[j] for j in range(n))
        total += acc / n
    return T * T * total


def _loop_ita(S: list[list[float]], ids: list[int], eps: float) -> float:
    n = len(S)
    total = 0.0
    for transpose in (False, True):
        acc = 0.0
        for i in range(n):
            row = [S[j][i] if transpose else S[i][j] for j in range(n)]
            ls = _log_softmax_row(row)
            same = [j for j in range(n) if ids[j] == ids[i]]
            for j in range(n):
                q = eps / n + ((1 - eps) / len(same) if j in same else 0.0)
                acc -= q * ls[j]
        total += acc / n
    return total


# ---- contrastive distillation ------------------------------------------------------------------

def test_cd_matches_loop_reference_3x3():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(3, 3, generator=g) * 3
    ST = torch.randn(3, 3, generator=g) * 3
    got = contrastive_distillation(S, ST, T=2.0).item()
    assert got == pytest.approx(_loop_cd(S.tolist(), ST.tolist(), 2.0), rel=1e-10)
    got1 = contrastive_distillation(S, ST, T=1.0).item()
    assert got1 == pytest.approx(_loop_cd(S.tolist(), ST.tolist(), 1.0), rel=1e-10)


def test_cd_hand_values_2x2():
    # Student all-zero: log_softmax = −ln2 everywhere, each row's CE = ln2 whatever the teacher,
    # so L = T² · (ln2 + ln2) = 8 ln2 at T = 2.
    S = torch.zeros(2, 2)
    ST = torch.tensor([[5.0, -1.0], [0.3, 2.0]])
    assert contrastive_distillation(S, ST).item() == pytest.approx(8 * math.log(2), rel=1e-12)
    # Teacher all-zero (p = ½), student diag 2·ln3 → S/T = diag(ln3): row CE = ln(3+1) − ½ ln3;
    # four identical rows over the two directions: L = 4 · 2 · (2 ln2 − ½ ln3) = 16 ln2 − 4 ln3.
    S = torch.diag(torch.tensor([2 * math.log(3), 2 * math.log(3)]))
    val = contrastive_distillation(S, torch.zeros(2, 2)).item()
    assert val == pytest.approx(16 * math.log(2) - 4 * math.log(3), rel=1e-12)


def test_cd_zero_gradient_at_teacher_and_teacher_detached():
    g = torch.Generator().manual_seed(1)
    ST = (torch.randn(4, 4, generator=g) * 5).requires_grad_(True)
    S = ST.detach().clone().requires_grad_(True)
    loss = contrastive_distillation(S, ST)
    assert loss.item() > 0  # minimised but not zero (teacher entropy)
    loss.backward()
    assert torch.allclose(S.grad, torch.zeros_like(S), atol=1e-12)
    assert ST.grad is None  # no gradient into the teacher
    # Away from the teacher the gradient is non-zero.
    S2 = (ST.detach() + torch.randn(4, 4, generator=g)).requires_grad_(True)
    contrastive_distillation(S2, ST).backward()
    assert S2.grad.abs().sum() > 1e-3


# ---- image-text alignment ----------------------------------------------------------------------

def test_same_prompt_targets():
    M = same_prompt_targets(torch.tensor([7, 7, 3]))
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    assert torch.equal(M, expected)
    assert torch.equal(same_prompt_targets(torch.tensor([0, 1, 2])), torch.eye(3, dtype=torch.float32))


def test_ita_equals_label_smoothed_ce_when_prompts_distinct():
    g = torch.Generator().manual_seed(2)
    S = torch.randn(5, 5, generator=g) * 4
    ids = torch.tensor([10, 3, 4, 99, 0])
    y = torch.arange(5)
    ref = F.cross_entropy(S, y, label_smoothing=0.2) + F.cross_entropy(S.t(), y, label_smoothing=0.2)
    assert image_text_alignment(S, ids).item() == pytest.approx(ref.item(), rel=1e-10)


def test_ita_duplicate_prompts_split_targets():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(3, 3, generator=g) * 2
    ids = [0, 0, 1]
    got = image_text_alignment(S, torch.tensor(ids), label_smoothing=0.2).item()
    assert got == pytest.approx(_loop_ita(S.tolist(), ids, 0.2), rel=1e-10)
    # Explicit row 0 of the image→text direction: target (0.8·½ + 0.2/3, same, 0.2/3).
    ls = F.log_softmax(S, dim=1)
    q_dup, q_other = 0.8 * 0.5 + 0.2 / 3, 0.2 / 3
    row0 = -(q_dup * (ls[0, 0] + ls[0, 1]) + q_other * ls[0, 2])
    ref_rows = [row0]
    ref_rows.append(-(q_dup * (ls[1, 0] + ls[1, 1]) + q_other * ls[1, 2]))
    ref_rows.append(-(q_other * (ls[2, 0] + ls[2, 1]) + (0.8 + 0.2 / 3) * ls[2, 2]))
    i2t = sum(ref_rows) / 3
    lt = F.log_softmax(S.t(), dim=1)
    t2i = (-(q_dup * (lt[0, 0] + lt[0, 1]) + q_other * lt[0, 2])
           - (q_dup * (lt[1, 0] + lt[1, 1]) + q_other * lt[1, 2])
           - (q_other * (lt[2, 0] + lt[2, 1]) + (0.8 + 0.2 / 3) * lt[2, 2])) / 3
    assert got == pytest.approx((i2t + t2i).item(), rel=1e-10)
    # Zero logits: every row's CE is ln3 (targets sum to 1) → 2 ln3.
    assert image_text_alignment(torch.zeros(3, 3), torch.tensor(ids)).item() == pytest.approx(2 * math.log(3))
    # Duplicates differ from treating them as distinct.
    assert got != pytest.approx(image_text_alignment(S, torch.tensor([0, 1, 2])).item())


def test_ita_extra_true_pairs_hand_values():
    """``also_true`` adds positives; each direction's indicator is row-normalised on its own."""
    g = torch.Generator().manual_seed(5)
    S = torch.randn(2, 2, generator=g) * 3
    extra = torch.tensor([[False, True], [False, False]])  # text 1 also describes image 0
    got = image_text_alignment(S, torch.tensor([0, 1]), label_smoothing=0.2, also_true=extra).item()
    ls, lt = F.log_softmax(S, dim=1), F.log_softmax(S.t(), dim=1)
    e = 0.2 / 2
    # images: row 0 targets (½, ½), row 1 (0, 1); texts: text 0 -> image 0 only, text 1 -> images 0 and 1
    i2t = (-((0.4 + e) * (ls[0, 0] + ls[0, 1])) - (e * ls[1, 0] + (0.8 + e) * ls[1, 1])) / 2
    t2i = (-((0.8 + e) * lt[0, 0] + e * lt[0, 1]) - (0.4 + e) * (lt[1, 0] + lt[1, 1])) / 2
    assert got == pytest.approx((i2t + t2i).item(), rel=1e-10)
    # no extra pairs = the spec's same-prompt loss
    none = torch.zeros(3, 3, dtype=torch.bool)
    S3 = torch.randn(3, 3, generator=g)
    ids = torch.tensor([0, 0, 1])
    assert image_text_alignment(S3, ids, also_true=none).item() == pytest.approx(
        image_text_alignment(S3, ids).item(), rel=1e-12)
    with pytest.raises(ValueError, match="also_true"):
        image_text_alignment(S3, ids, also_true=torch.zeros(2, 2, dtype=torch.bool))


def test_ita_shape_checks():
    with pytest.raises(ValueError):
        image_text_alignment(torch.zeros(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        image_text_alignment(torch.zeros(3, 2), torch.tensor([0, 1, 2]))


# ---- task loss, clip logits, LwF ---------------------------------------------------------------

def test_clip_logits_and_task_loss():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(6, 8, generator=g)
    t = torch.randn(4, 8, generator=g)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    logits = clip_logits(f, t, scale=100.0)
    cos = (f / f.norm(dim=1, keepdim=True)) @ (t / t.norm(dim=1, keepdim=True)).t()
    assert torch.allclose(logits, 100 * cos, atol=1e-10)
    ref = F.cross_entropy(100 * cos, y, label_smoothing=0.2)
    assert task_loss(f, t, y).item() == pytest.approx(ref.item(), rel=1e-10)
    ref0 = F.cross_entropy(50 * cos, y)
    assert task_loss(f, t, y, logit_scale=50.0, label_smoothing=0.0).item() == pytest.approx(ref0.item(), rel=1e-10)


def test_lwf_one_direction_soft_ce():
    g = torch.Generator().manual_seed(5)
    S = (torch.randn(4, 3, generator=g) * 3).requires_grad_(True)
    ST = (torch.randn(4, 3, generator=g) * 3).requires_grad_(True)
    T = 2.0
    p = F.softmax(ST.detach() / T, dim=1)
    kl = F.kl_div(F.log_softmax(S.detach() / T, dim=1), p, reduction="batchmean")
    entropy = -(p * p.log()).sum(1).mean()
    got = lwf_distillation(S, ST, T)
    assert got.item() == pytest.approx((T * T * (kl + entropy)).item(), rel=1e-10)
    got.backward()
    assert ST.grad is None
    Sq = ST.detach().clone().requires_grad_(True)
    lwf_distillation(Sq, ST).backward()
    assert torch.allclose(Sq.grad, torch.zeros_like(Sq), atol=1e-12)


# ---- AWC / l2 / EWC ------------------------------------------------------------------------------

def test_awc_importance_mean_one_detached_and_floors():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(3, 4, generator=g).requires_grad_(True)
    grads = {
        "visual.w": w * 2,  # a non-leaf with grad history: the result must be detached
        "text.b": torch.tensor([1.0, 2.0, 3.0]),
        "logit_scale": torch.tensor(0.7),
        "unused": None,
        "zero": torch.zeros(2, 2),
    }
    params = {"unused": torch.zeros(5, 2)}
    F_ = awc_importance(grads, params=params)
    assert set(F_) == set(grads)
    for k in ("visual.w", "text.b"):
        assert F_[k].mean().item() == pytest.approx(1.0, rel=1e-6)
        assert not F_[k].requires_grad
    # g² / mean(g²) by hand: (1, 4, 9) / (14/3)
    assert torch.allclose(F_["text.b"].double(), torch.tensor([3 / 14, 12 / 14, 27 / 14]), atol=1e-6)
    assert torch.equal(F_["logit_scale"], torch.tensor(AWC_FLOOR, dtype=torch.float32))
    assert F_["unused"].shape == (5, 2) and torch.all(F_["unused"] == AWC_FLOOR)
    assert F_["zero"].shape == (2, 2) and torch.all(F_["zero"] == AWC_FLOOR)
    assert torch.isfinite(F_["zero"]).all()
    # Without params a None gradient gives a 0-d floor that broadcasts.
    F2 = awc_importance({"unused": None})
    assert F2["unused"].ndim == 0 and F2["unused"].item() == pytest.approx(AWC_FLOOR)
    # Invariant to a uniform gradient scale (AMP loss scale cancels).
    F3 = awc_importance({"text.b": torch.tensor([1.0, 2.0, 3.0]) * 1024})
    assert torch.allclose(F3["text.b"], F_["text.b"])


def test_awc_penalty_hand_value_and_gradient():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    anchor = torch.zeros(2, requires_grad=True)
    imp = torch.tensor([1.0, 3.0])
    # 0.5 · (1·1² + 3·2²) = 6.5 — plain sum, no ½, no count normalisation.
    pen = awc_penalty({"w": theta}, {"w": anchor}, {"w": imp}, lam=0.5)
    assert pen.item() == pytest.approx(6.5)
    pen.backward()
    assert anchor.grad is None
    assert torch.allclose(theta.grad, 2 * 0.5 * imp * theta.detach())

    g = torch.Generator().manual_seed(7)
    params = {"a": torch.randn(3, 3, generator=g).requires_grad_(True),
              "b": torch.randn(4, generator=g).requires_grad_(True)}
    anchors = {k: v.detach() + torch.randn(v.shape, generator=g) for k, v in params.items()}
    imps = awc_importance({k: torch.randn(v.shape, generator=g) for k, v in params.items()})
    lam = 1.7
    pen = awc_penalty(params, anchors, imps, lam=lam)
    ref = lam * sum((imps[k] * (params[k].detach() - anchors[k]) ** 2).sum() for k in params)
    assert pen.item() == pytest.approx(ref.item(), rel=1e-6)
    pen.backward()
    for k, p in params.items():
        assert torch.allclose(p.grad, 2 * lam * imps[k].double() * (p.detach() - anchors[k]), rtol=1e-5, atol=1e-6)


def test_awc_penalty_scalar_importance_broadcasts_and_missing_key():
    p = torch.ones(2, 3, requires_grad=True)
    pen = awc_penalty({"p": p}, {"p": torch.zeros(2, 3)}, awc_importance({"p": None}))
    assert pen.item() == pytest.approx(6 * AWC_FLOOR, rel=1e-6)
    with pytest.raises(KeyError):
        awc_penalty({"p": p}, {}, {"p": torch.ones(())})


def test_l2_importance_is_ones():
    params = {"a": torch.randn(2, 3), "logit_scale": torch.tensor(4.6)}
    imp = l2_importance(params)
    assert imp["a"].shape == (2, 3) and torch.all(imp["a"] == 1)
    assert imp["logit_scale"].shape == () and imp["logit_scale"].item() == 1
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    assert awc_penalty({"w": theta}, {"w": torch.zeros(2)}, l2_importance({"w": theta})).item() == pytest.approx(5.0)


def test_ewc_importance_mean_of_squares_then_normalised():
    batches = [{"w": torch.tensor([1.0, 0.0]), "u": None, "logit_scale": torch.tensor(1.0)},
               {"w": torch.tensor([1.0, 2.0]), "u": None, "logit_scale": torch.tensor(2.0)}]
    imp = ewc_importance_from_grads(batches, params={"u": torch.zeros(3)})
    # mean g² = (1, 2), mean 1.5 → (2/3, 4/3)
    assert torch.allclose(imp["w"].double(), torch.tensor([2 / 3, 4 / 3]), atol=1e-7)
    assert imp["u"].shape == (3,) and torch.all(imp["u"] == AWC_FLOOR)
    assert imp["logit_scale"].item() == pytest.approx(AWC_FLOOR)
    # A None in one batch counts as a zero gradient for that batch.
    acc = EwcFisherAccumulator()
    acc.add({"w": None})
    acc.add({"w": torch.tensor([2.0, 0.0])})
    assert torch.allclose(acc.finalize()["w"].double(), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError):
        EwcFisherAccumulator().finalize()
