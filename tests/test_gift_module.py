"""GIFT's training step: the spec's gradient order and the baselines sharing the loop."""

from __future__ import annotations

import copy

import pytest
import torch

from models.clip import create_clip
from train.gift.losses import (awc_importance, awc_penalty, clip_logits, contrastive_distillation, image_text_alignment,
                        task_loss)
from train.gift.module import GIFTTask, logit_scale_is_fixed

PROMPTS = ["a photo of a cube.", "a photo of a sphere.", "a photo of a cylinder."]


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    b = create_clip("synthloop-micro-vit32")
    logit_scale_is_fixed(b.model)
    return b


def _batch(b=6):
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(b, 3, 32, 32, generator=g),
        "label": torch.tensor([0, 1, 2, 0, 1, 2][:b]),
        "replay_image": torch.randn(b, 3, 32, 32, generator=g),
        "replay_txt": ["a photo of a red cube.", "a photo of a blue sphere.", "a photo of a red cube.",
                       "a photo of a small metal cylinder.", "a photo of a gray cube.", "a photo of a cyan sphere."][:b],
        "prompt_id": torch.tensor([3, 7, 3, 11, 5, 9][:b]),
    }


def _models(bundle):
    teacher = copy.deepcopy(bundle.model).eval()
    student = copy.deepcopy(bundle.model)
    with torch.no_grad():  # the student has moved away from the previous model, so CD and AWC are non-trivial
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    logit_scale_is_fixed(student)
    return student, teacher


def test_gift_gradient_equals_spec_net_gradient(bundle):
    student, teacher = _models(bundle)
    anchor_model = copy.deepcopy(teacher)
    module = GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="gift")
    module.anchor = {n: p.detach().clone() for n, p in anchor_model.named_parameters()}
    batch = _batch()
    module.accumulate_gradients(batch)
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    got = {n: p.grad.clone() for n, p in params.items()}

    # reference, written out from gift.md: synthetic branch first, F from its gradient, then task + AWC
    tok = bundle.tokenizer
    s = clip_logits(student.encode_image(batch["replay_image"]), student.encode_text(tok(batch["replay_txt"])))
    with torch.no_grad():
        t = clip_logits(teacher.encode_image(batch["replay_image"]), teacher.encode_text(tok(batch["replay_txt"])))
    l_syn = contrastive_distillation(s, t, 2.0) + 0.25 * image_text_alignment(s, batch["prompt_id"], 0.2)
    names = list(params)
    g_syn = torch.autograd.grad(l_syn, [params[n] for n in names], allow_unused=True)
    F = awc_importance(dict(zip(names, g_syn)), params=params)
    l_rest = task_loss(student.encode_image(batch["image"]), student.encode_text(tok(PROMPTS)), batch["label"]) \
        + awc_penalty(params, {n: module.anchor[n] for n in names}, F, 1.0)
    g_rest = torch.autograd.grad(l_rest, [params[n] for n in names], allow_unused=True)
    for n, a, b in zip(names, g_syn, g_rest):
        expected = (a if a is not None else 0) + (b if b is not None else 0)
        assert torch.allclose(got[n], expected, atol=1e-6, rtol=1e-4), n
    assert not student.logit_scale.requires_grad


def test_finetune_gradient_is_task_loss_only(bundle):
    student, _ = _models(bundle)
    module = GIFTTask(student, None, bundle.tokenizer, PROMPTS, method="finetune")
    batch = _batch()
    module.accumulate_gradients(batch)
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    loss = task_loss(student.encode_image(batch["image"]), student.encode_text(bundle.tokenizer(PROMPTS)),
                     batch["label"])
    ref = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    for (n, p), r in zip(params.items(), ref):
        assert torch.allclose(p.grad if p.grad is not None else torch.zeros_like(p),
                              r if r is not None else torch.zeros_like(p), atol=1e-6), n


def test_ewc_importance_is_a_mean_normalised_fisher_of_the_previous_task(bundle):
    from datagen.world import TaskSamples
    from train.gift.fisher import fisher_importance

    student, teacher = _models(bundle)
    task = TaskSamples("shape", image_size=32, split="train")
    prompts = [f"a photo of a {c}." for c in ("cube", "sphere", "cylinder")]
    student.train()
    kw = dict(n_samples=6, seed=1, scale=16.7)
    f1 = fisher_importance(student, bundle.tokenizer, task, prompts, bundle.preprocess_val, **kw)
    assert student.training and all(m.training for m in student.modules())  # modes restored
    f2 = fisher_importance(student, bundle.tokenizer, task, prompts, bundle.preprocess_val, **kw)
    assert f1.keys() == f2.keys() and all(torch.equal(f1[k], f2[k]) for k in f1)  # a function of (model, seed)
    means = [v.mean().item() for k, v in f1.items() if v.numel() > 1 and "logit_scale" not in k]
    assert means and all(abs(m - 1) < 1e-4 or m < 1e-5 for m in means)
    # the module uses it as given (no replay needed), and adds no penalty without one (task 0)
    module = GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="ewc", importance=f1)
    assert module.static_importance is f1
    module.accumulate_gradients(_batch())
    assert GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="ewc").static_importance is None


def test_methods_needing_a_teacher_refuse_none(bundle):
    student, _ = _models(bundle)
    with pytest.raises(ValueError, match="needs the previous model"):
        GIFTTask(student, None, bundle.tokenizer, PROMPTS, method="gift")
    with pytest.raises(ValueError, match="unknown continual method"):
        GIFTTask(student, None, bundle.tokenizer, PROMPTS, method="magic")


def test_ita_describes_targets_come_from_the_batch_multi_hot(bundle):
    student, teacher = _models(bundle)
    batch = _batch()
    hot = torch.zeros(6, 12, dtype=torch.bool)  # pool of 12 prompts; image 1 is also described by prompt 5
    hot[1, 5] = True
    batch["replay_describes"] = hot
    task = GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="cd_ita", ita_targets="describes")
    extra = task._also_true(batch)
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[1, 4] = True  # prompt id 5 is the text of batch item 4
    assert torch.equal(extra, want)
    assert GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="cd_ita")._also_true(batch) is None
    del batch["replay_describes"]
    with pytest.raises(ValueError, match="describes"):
        task._also_true(batch)
    with pytest.raises(ValueError, match="ita_targets"):
        GIFTTask(student, teacher, bundle.tokenizer, PROMPTS, method="cd_ita", ita_targets="nearby")


@pytest.mark.parametrize("replay_bn", ["batch", "frozen"])
def test_replay_bn_frozen_keeps_the_task_images_batchnorm_statistics(replay_bn):
    """``replay_bn: frozen``: the replay images leave the student's BatchNorm running statistics to the task
    images (they equal those of a forward of the task images alone); ``batch`` mixes both in."""
    torch.manual_seed(0)
    b = create_clip("synthloop-tiny-rn64")
    logit_scale_is_fixed(b.model)
    student, teacher = copy.deepcopy(b.model).train(), copy.deepcopy(b.model).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 3, 64, 64, generator=g), "label": torch.tensor([0, 1, 2, 0]),
             "replay_image": 3 + 2 * torch.randn(4, 3, 64, 64, generator=g),  # another look: other statistics
             "replay_txt": PROMPTS + PROMPTS[:1], "prompt_id": torch.tensor([0, 1, 2, 0])}
    task_only = copy.deepcopy(student)
    task_only.encode_image(batch["image"])
    module = GIFTTask(student, teacher, b.tokenizer, PROMPTS, method="gift", replay_bn=replay_bn)
    module.accumulate_gradients(batch)
    assert all(m.training for m in student.modules())  # the modes are restored after the replay forward
    stats = {k: v for k, v in student.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    ref = {k: v for k, v in task_only.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    assert stats
    same = all(torch.allclose(stats[k], ref[k], atol=1e-6) for k in stats)
    assert same == (replay_bn == "frozen")
    with pytest.raises(ValueError, match="replay_bn must be one of"):
        GIFTTask(student, teacher, b.tokenizer, PROMPTS, method="gift", replay_bn="eval")
