"""Unicorn's text mean μ_T (issue 18, item 3): one corpus mean over every stage, carried from stage A to
stage B through the VLM export (``text_mean.safetensors``), topped up to ``text_mean_warmup`` captions
before a stage's first step, with its sample count logged; older exports without one still load."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from datagen.text.corpus import world_corpus
from datagen.unicorn import StreamingMean
from datagen.unicorn.stages import UnicornText
from models.clip import create_clip, save_open_clip_checkpoint
from models.tiny_lm import build_tiny_lm
from models.vlm import TEXT_MEAN_NAME, EmbeddingVLM, build_vlm, load_text_mean
from train.core.datamodule import OnlineDataModule
from train.unicorn.module import UnicornVLM

CLIP = "synthloop-tiny-rn64"
BS = 4


class Recorder(pl.Callback):
    """The captions trained on, and μ_T's sample count just before the first step's update."""

    def __init__(self) -> None:
        self.captions: list[str] = []
        self.count_at_first_step: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.count_at_first_step is None:
            self.count_at_first_step = pl_module.text_mean.count
        self.captions += list(batch["caption"])


def fit(model: UnicornVLM, steps: int, seed: int, generator_stage: str, shards: str | None = None):
    dm = OnlineDataModule(None if shards else UnicornText(stage=generator_stage, n_objects=(1, 1)), shards=shards,
                          batch_size=BS, num_workers=0, seed=seed)
    rec = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[rec])
    trainer.fit(model, datamodule=dm)
    return trainer, rec


def corpus_mean(model: UnicornVLM, captions: list[str]) -> torch.Tensor:
    return model.text_embeddings(captions).double().mean(0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("unicorn_mean")
    lm = build_tiny_lm(root / "lm", texts=world_corpus(200), hidden=32, layers=1, heads=2)
    torch.manual_seed(0)  # one fixed CLIP for every stage: the means of the stages live in the same space
    clip = save_open_clip_checkpoint(create_clip(CLIP).model, root / "clip.pt", CLIP)
    return root, str(lm), str(clip)


def _model(clip: str, **kw) -> UnicornVLM:
    return UnicornVLM(clip_model=CLIP, clip_checkpoint=clip, warmup_steps=1, lr=1e-3, **kw)


@pytest.fixture(scope="module")
def stages(assets):
    """Stage A (3 steps, fresh, no warm-up) then stage B (2 steps) started from A's export."""
    root, lm, clip = assets
    a = _model(clip, stage="align", lm_path=lm, export_dir=str(root / "A"), text_mean_warmup=0)
    _, rec_a = fit(a, 3, seed=11, generator_stage="captions")
    b = _model(clip, stage="instruct", init_from=str(root / "A"), export_dir=str(root / "B"), text_mean_warmup=0)
    trainer_b, rec_b = fit(b, 2, seed=12, generator_stage="instructions")
    return SimpleNamespace(root=root, clip=clip, a=a, b=b, rec_a=rec_a, rec_b=rec_b, trainer_b=trainer_b)


def test_mean_is_carried_from_stage_a_to_stage_b(stages):
    a, b = stages.a, stages.b
    assert len(stages.rec_a.captions) == 3 * BS and len(stages.rec_b.captions) == 2 * BS
    assert a.text_mean.count == 3 * BS
    assert stages.rec_b.count_at_first_step == 3 * BS  # stage B starts where stage A stopped, not from zero
    assert b.text_mean.count == 5 * BS
    want = corpus_mean(b, stages.rec_a.captions + stages.rec_b.captions)
    assert torch.allclose(b.text_mean.mean.double(), want, atol=1e-6)
    assert torch.allclose(a.text_mean.mean.double(), corpus_mean(b, stages.rec_a.captions), atol=1e-6)
    summary = b.text_mean_summary()
    assert (summary["n"], summary["carried"], summary["warmup"], summary["trained"]) == (5 * BS, 3 * BS, 0, 2 * BS)


def test_count_is_logged_and_the_export_holds_the_mean_exactly(stages):
    b = stages.b
    assert float(stages.trainer_b.callback_metrics["unicorn/text_mean_n"]) == 5 * BS
    assert (stages.root / "B" / TEXT_MEAN_NAME).is_file()
    back = EmbeddingVLM.from_pretrained(stages.root / "B")
    st = back.text_mean_state
    assert st["count"] == b.text_mean.count and st["dim"] == b.text_mean.dim
    assert st["sum"].dtype == torch.float64 and torch.equal(st["sum"], b.text_mean.state_dict()["sum"])
    assert torch.equal(back.text_mean, b.text_mean.mean)
    hist = st["info"]["history"]
    assert [h["stage"] for h in hist] == ["align", "instruct"]
    assert [(h["carried"], h["trained"], h["n"]) for h in hist] == [(0, 3 * BS, 3 * BS), (3 * BS, 2 * BS, 5 * BS)]
    assert st["info"]["clip_model"] == CLIP and st["info"]["clip_checkpoint"] == stages.clip
    # a third stage from B's export continues from 20 samples
    c = _model(stages.clip, stage="instruct", init_from=str(stages.root / "B"), text_mean_warmup=0, export=False)
    assert c.text_mean.count == 5 * BS and torch.equal(c.text_mean.mean, b.text_mean.mean)
    # ... unless told to restart
    d = _model(stages.clip, stage="instruct", init_from=str(stages.root / "B"), carry_text_mean=False, export=False)
    assert d.text_mean.count == 0


def test_end_of_stage_line_reports_the_count(assets, capsys):
    root, lm, clip = assets
    m = _model(clip, stage="align", lm_path=lm, export=False, text_mean_warmup=6, transfer_mode="ideal",
               image_pool_size=8)
    _, rec = fit(m, 1, seed=21, generator_stage="captions")
    out = capsys.readouterr().out
    assert f"text mean μ_T over {6 + BS} captions (0 carried from earlier stages, 6 warm-up, {BS} trained" in out
    assert "‖μ_V − μ_T‖" in out  # ideal computes the image pool: the gap between the two means is reported
    gap = m.mean_gap()
    assert gap is not None and gap["gap_norm"] > 0 and -1 <= gap["means_cos"] <= 1
    assert rec.count_at_first_step == 6


def test_warm_up_before_the_first_step(assets):
    root, lm, clip = assets
    m = _model(clip, stage="align", lm_path=lm, export_dir=str(root / "W"), text_mean_warmup=10)
    trainer, rec = fit(m, 2, seed=31, generator_stage="captions")
    assert rec.count_at_first_step == 10  # the first step's mean is over 10 + BS captions, never BS
    assert m.text_mean.count == 10 + 2 * BS
    assert m.text_mean_summary()["warmup"] == 10 and m.text_mean_summary()["trained"] == 2 * BS
    # the warm-up captions come from another seed than the training stream: not the captions trained on
    warm = m._warmup_captions(10)
    assert len(warm) == 10 and warm != rec.captions[:10]
    want = corpus_mean(m, warm + rec.captions)
    assert torch.allclose(m.text_mean.mean.double(), want, atol=1e-6)
    # a stage carrying 18 samples needs no warm-up of 10; one asking for 25 tops up by 7
    b = _model(clip, stage="instruct", init_from=str(root / "W"), text_mean_warmup=10, export=False)
    assert b.warm_up_text_mean(["a red cube."] * 50) == 0
    b = _model(clip, stage="instruct", init_from=str(root / "W"), text_mean_warmup=25, export=False)
    assert b.warm_up_text_mean(["a red cube."] * 50) == 7 and b.text_mean.count == 25
    with pytest.raises(ValueError, match="text_mean_warmup"):
        _model(clip, stage="align", lm_path=lm, text_mean_warmup=-1)


def test_warm_up_from_shards(assets, tmp_path):
    from datagen.unicorn.export import export_unicorn

    root, lm, clip = assets
    export_unicorn(UnicornText(stage="captions", n_objects=(1, 1)), tmp_path / "shards", 12, progress=False)
    m = _model(clip, stage="align", lm_path=lm, export=False, text_mean_warmup=9)
    _, rec = fit(m, 1, seed=0, generator_stage="captions", shards=str(tmp_path / "shards"))
    assert rec.count_at_first_step == 9 and m.text_mean.count == 9 + BS


def test_older_export_without_a_mean_loads_with_a_warning(assets, tmp_path, caplog):
    root, lm, clip = assets
    old = build_vlm(lm, embed_dim=create_clip(CLIP).model.text_projection.shape[1])
    old.save_pretrained(tmp_path / "old")  # text_mean_state None: no text_mean.safetensors, as before
    assert not (tmp_path / "old" / TEXT_MEAN_NAME).exists()
    back = EmbeddingVLM.from_pretrained(tmp_path / "old")
    assert back.text_mean_state is None and back.text_mean is None and load_text_mean(tmp_path / "old") is None
    with caplog.at_level(logging.WARNING, logger="train.unicorn.module"):
        m = _model(clip, stage="align", init_from=str(tmp_path / "old"), export=False)
    lines = [r.getMessage() for r in caplog.records if "no saved text mean" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert m.text_mean.count == 0


def test_save_pretrained_round_trip_and_no_stale_file(assets, tmp_path):
    _, lm, _ = assets
    vlm = build_vlm(lm, embed_dim=8)
    total = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1e3
    vlm.text_mean_state = {"dim": 8, "sum": total, "count": 123_457, "info": {"history": [{"stage": "align"}]}}
    vlm.save_pretrained(tmp_path / "v")
    st = EmbeddingVLM.from_pretrained(tmp_path / "v").text_mean_state
    assert torch.equal(st["sum"], total) and st["count"] == 123_457 and st["info"]["history"] == [{"stage": "align"}]
    mean = StreamingMean(8)
    mean.load_state_dict(st)  # the StreamingMean state format
    assert torch.equal(mean.mean, (total / 123_457).float())
    vlm.text_mean_state = None  # saving again into the same folder leaves no stale mean behind
    vlm.save_pretrained(tmp_path / "v")
    assert EmbeddingVLM.from_pretrained(tmp_path / "v").text_mean_state is None


def test_mean_sums_every_rank_under_ddp(assets):
    """Under DDP the batch's sum and count are reduced over the ranks (here: a fake 2-rank strategy)."""
    m = StreamingMean(3).add(torch.tensor([1.0, 2.0, 3.0]), 2)
    assert m.count == 2 and torch.equal(m.mean, torch.tensor([0.5, 1.0, 1.5]))
    with pytest.raises(ValueError):
        m.add(torch.zeros(4), 1)
    _, lm, clip = assets
    model = _model(clip, stage="align", lm_path=lm, export=False)
    model._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce=lambda t, reduce_op: 2 * t))
    u = torch.nn.functional.normalize(torch.randn(5, model.text_mean.dim), dim=-1)
    model.update_text_mean(u)
    assert model.text_mean.count == 10 and torch.allclose(model.text_mean.mean, u.mean(0), atol=1e-6)
