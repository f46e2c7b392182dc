"""The UniFilter scorer (models/unifilter.py): forward/backward, visual-token splicing, save/load round trip,
local-path-only builders. Built tiny and random (micro open_clip ViT + 1-layer Llama)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from models.errors import UserError
from models.unifilter import (PAPER_VISUAL_GRID, ScorerConfig, UniFilterScorer, build_scorer, real_scale_config,
                              tiny_scorer)

TEXTS = ["there are two objects: a large red metal cube and a small blue rubber sphere.",
         "there is one object: a small green rubber cylinder."]


@pytest.fixture(scope="module")
def scorer():
    return tiny_scorer(TEXTS, vision_model="synthloop-micro-vit32", visual_grid=2, hidden=32, layers=1, heads=2)


def test_forward_backward_reaches_every_part(scorer):
    scorer.train()
    images = torch.randn(2, 3, 32, 32)
    scores = scorer.score(["<image> " + TEXTS[0], "<image> " + TEXTS[1]], images)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    torch.nn.functional.mse_loss(scores, torch.tensor([3.0, 0.0])).backward()
    for name, part in (("tower", scorer.tower), ("projector", scorer.projector), ("backbone", scorer.backbone),
                       ("score head", scorer.score_head)):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    scorer.zero_grad()


def test_visual_tokens_are_pooled_and_spliced_per_image(scorer):
    assert scorer.config.tokens_per_image == 4 and scorer.tower(torch.randn(3, 3, 32, 32)).shape == (3, 4, 64)
    ids, _ = scorer.encode_texts(["<image> a cube <image> a sphere", "<image> a cube"])
    assert int((ids == scorer.image_token_id).sum()) == 3 * 4
    with pytest.raises(ValueError, match="image tokens"):
        scorer.score(["<image> a cube"], torch.randn(2, 3, 32, 32))
    # an interleaved document (2 images in row 0) and a pair in one batch
    scorer.eval()
    with torch.no_grad():
        images = torch.randn(3, 3, 32, 32)
        both = scorer.score(["<image> a cube <image> a sphere", "<image> a cube"], images)
        alone = scorer.score(["<image> a cube"], images[2:])
        assert torch.allclose(both[1], alone[0], atol=1e-5)  # padding and the other row change nothing
        swapped = scorer.score(["<image> a cube <image> a sphere"], images[[1, 0]])
        assert not torch.allclose(swapped[0], both[0])  # images are placed in text order


def test_the_score_is_read_at_the_last_non_pad_token(scorer):
    scorer.eval()
    with torch.no_grad():
        images = torch.randn(1, 3, 32, 32)
        ids, mask = scorer.encode_texts(["<image> a cube"])
        for side in ("left", "right"):
            scorer.tokenizer.padding_side = side
            ids2, mask2 = scorer.encode_texts(["<image> a cube", "<image> a small red metal cube and a sphere"])
            s = scorer(ids2, mask2, torch.cat([images, images]))
            assert torch.allclose(s[0], scorer(ids, mask, images)[0], atol=1e-5), side
        scorer.tokenizer.padding_side = "left"
    assert UniFilterScorer.levels(torch.tensor([-0.7, 0.4, 1.6, 2.5, 3.9])).tolist() == [0, 0, 2, 2, 3]


def test_save_pretrained_round_trip(scorer, tmp_path):
    scorer.eval()
    with torch.no_grad():
        scorer.score_head.weight.normal_()  # make the scores depend on everything
        images = torch.randn(2, 3, 32, 32)
        texts = ["<image> " + TEXTS[0], "<image> " + TEXTS[1]]
        before = scorer.score(texts, images)
    folder = scorer.save_pretrained(tmp_path / "scorer")
    assert {p.name for p in folder.iterdir()} >= {"scorer_config.json", "lm", "vision_tower.safetensors",
                                                   "projector.safetensors", "score_head.safetensors",
                                                   "checksums.sha256"}
    loaded = UniFilterScorer.from_pretrained(folder).eval()
    assert loaded.config == scorer.config
    with torch.no_grad():
        assert torch.allclose(loaded.score(texts, images), before, atol=1e-5)
    (folder / "projector.safetensors").write_bytes(b"damaged")
    with pytest.raises(UserError, match="damaged"):
        UniFilterScorer.from_pretrained(folder)
    with pytest.raises(UserError, match="not a UniFilter scorer folder"):
        UniFilterScorer.from_pretrained(tmp_path)


def test_real_scale_config_is_the_papers_and_loads_only_local_paths(tmp_path):
    cfg = real_scale_config(str(tmp_path / "siglip.bin"))
    assert cfg.vision_model in open_clip.list_models() and cfg.visual_grid == PAPER_VISUAL_GRID
    assert cfg.tokens_per_image == 144
    with pytest.raises(UserError, match="lm_path.*not a folder"):
        build_scorer(cfg, "Qwen/Qwen2.5-0.5B")  # a hub id is refused, never downloaded
    (tmp_path / "qwen").mkdir()
    with pytest.raises(UserError, match="vision_pretrained.*does not exist"):
        build_scorer(cfg, tmp_path / "qwen")
    with pytest.raises(UserError, match="visual_grid"):
        ScorerConfig(vision_model="synthloop-micro-vit32", visual_grid=0)
    with pytest.raises(UserError, match="vision_pretrained.*does not exist"):
        tiny_scorer(TEXTS, vision_pretrained=str(tmp_path / "clip_final.pt"))
    with pytest.raises(UserError, match="patch grid"):
        tiny_scorer(TEXTS, vision_model="synthloop-micro-vit32", visual_grid=5, hidden=32, layers=1, heads=2)
