"""UniFilter scorer training (train/unifilter): the metrics with hand-worked numbers, and a short
``synthloop fit`` of configs/unifilter/toy.yaml (shrunk) that logs the validation metrics and exports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from train.unifilter.metrics import average_ranks, confusion_matrix, rounded_accuracy, score_metrics, spearman

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_worked_example():
    scores = [0.2, 1.4, 1.6, 2.9, 3.7, -0.4, 2.4, 0.5]
    levels = [0, 1, 2, 3, 3, 1, 2, 0]
    # rounded: 0 1 2 3 3 0 2 0 -> 7 of 8 right (the level-1 sample at -0.4 reads 0)
    assert rounded_accuracy(scores, levels) == pytest.approx(7 / 8)
    m = confusion_matrix(scores, levels)
    assert m.tolist() == [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]]
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman(scores, levels) == pytest.approx(spearmanr(scores, levels).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 1, 1], [0, 1, 2]) == 0.0
    full = score_metrics(scores, levels)
    assert full["acc_level"] == [1.0, 0.5, 1.0, 1.0] and full["confusion"] == m.tolist()
    assert full["mse"] == pytest.approx(np.mean((np.array(scores) - np.array(levels)) ** 2))


def test_short_fit_logs_the_validation_metrics(tmp_path, monkeypatch):
    from models.unifilter import UniFilterScorer
    from train.core.cli import run_cli

    monkeypatch.chdir(ROOT)
    cli = run_cli(["fit", "--config", "configs/unifilter/toy.yaml", "--trainer.enable_progress_bar=false",
                   "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
                   f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                   "--model.init_args.vision_model=synthloop-micro-vit32", "--model.init_args.visual_grid=2",
                   "--model.init_args.lm_hidden=32", "--model.init_args.lm_layers=1", "--model.init_args.lm_heads=2",
                   "--model.init_args.val_size=24", "--model.init_args.val_batch_size=12",
                   f"--model.init_args.export_dir={tmp_path / 'scorer'}",
                   "--data.init_args.batch_size=8", "--data.init_args.num_workers=0"])
    trainer, module = cli.trainer, cli.model
    assert trainer.global_step == 4
    logged = trainer.callback_metrics
    for key in ("unifilter/val_acc", "unifilter/val_spearman", "unifilter/val_mse", "unifilter/val_acc_level0",
                "unifilter/val_confusion_00", "unifilter/val_confusion_33", "train/loss"):
        assert key in logged, key
    m = module.last_metrics
    assert 0.0 <= m["acc"] <= 1.0 and np.array(m["confusion"]).sum() == 24
    assert np.array(m["confusion"]).sum(1).tolist() == [6, 6, 6, 6]  # the held-out set is balanced
    # the held-out set is the training generator with split=val, and shares no scene with training
    train_gen, val_gen = cli.datamodule.generator, module.val_generator()
    assert (train_gen.split, val_gen.split) == ("train", "val") and val_gen.text_mode == train_gen.text_mode
    loaded = UniFilterScorer.from_pretrained(tmp_path / "scorer")
    assert loaded.config.vision_model == "synthloop-micro-vit32"


@pytest.mark.slow
@pytest.mark.parametrize("strategy,port", [("ddp", 29681), ("deepspeed_stage_2", 29682)])
def test_two_process_fit_scores_the_whole_held_out_set_once(tmp_path, strategy, port):
    """``synthloop fit`` of the toy scorer under torchrun, 2 CPU processes, DDP and DeepSpeed ZeRO-2 (over gloo):
    each rank scores its share of the held-out set, rank 0 reports metrics over all of it (each sample once)
    and exports the scorer."""
    import subprocess
    import sys

    from models.unifilter import UniFilterScorer

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "train.cli", "fit", "--config", "configs/unifilter/toy.yaml", "--trainer.devices=2",
           f"--trainer.strategy={strategy}", "--trainer.enable_progress_bar=false", "--trainer.max_steps=2",
           "--trainer.val_check_interval=2", f"--trainer.default_root_dir={tmp_path}",
           f"--trainer.logger.init_args.save_dir={tmp_path}", "--model.init_args.vision_model=synthloop-micro-vit32",
           "--model.init_args.visual_grid=2", "--model.init_args.lm_hidden=32", "--model.init_args.lm_layers=1",
           "--model.init_args.lm_heads=2", "--model.init_args.val_size=10", "--model.init_args.val_batch_size=4",
           f"--model.init_args.export_dir={tmp_path / 'scorer'}", "--data.init_args.batch_size=4",
           "--data.init_args.num_workers=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    table = out[out.index("UniFilter validation at step 2"):].splitlines()[3:7]  # the 4 level rows
    counts = [sum(int(x) for x in row.split()[2:6]) for row in table]
    assert sum(counts) == 10, table  # 10 held-out samples (5 per rank), each counted once
    assert out.count("UniFilter validation at step 2") == 1  # printed by rank 0 only
    assert UniFilterScorer.from_pretrained(tmp_path / "scorer").config.vision_model == "synthloop-micro-vit32"
