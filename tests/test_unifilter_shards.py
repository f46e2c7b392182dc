"""`synthloop score` / `synthloop filter` (train/unifilter/shards.py) on real WebDataset shards of UniFilter
world captions, with a tiny random scorer: Parquet per tar, resume, torchrun sharding, byte-exact filtering
readable by open_clip's trainer, and one-line refusals of damaged or mismatched inputs."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from datagen.shards import ShardStream, export_stream, read_manifest
from datagen.shards.reader import _scan_tar
from datagen.unifilter import LevelCaptions
from models.unifilter import UniFilterScorer, tiny_scorer
from train.cli import main as cli
from train.unifilter.shards import keep_masks, score_path

ROOT = Path(__file__).resolve().parents[1]
N, MAXCOUNT = 30, 10  # three tars


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unifilter_shards")
    gen = LevelCaptions(image_size=32)
    info = export_stream(gen, N, root / "shards", seed=3, maxcount=MAXCOUNT, image_format="png", progress=False)
    texts = [s["txt"] for s in ShardStream(info.pattern, shuffle_shards=False, epochs=1)]
    scorer = tiny_scorer(texts, vision_model="synthloop-micro-vit32", visual_grid=2, hidden=32, layers=1, heads=2)
    scorer.save_pretrained(root / "scorer")
    return root, info


def _run(*argv: str) -> None:
    cli(list(argv))


def _scores(path: Path) -> tuple[list[str], list[float]]:
    t = pq.read_table(path)
    return t.column("key").to_pylist(), t.column("score").to_pylist()


def test_score_writes_one_parquet_per_tar_equal_to_the_model_and_resumes(data, tmp_path, capsys):
    root, info = data
    out = tmp_path / "scores"
    _run("score", "--scorer", str(root / "scorer"), "--shards", info.pattern, "--out", str(out), "--no-progress")
    files = sorted(out.glob("*.parquet"))
    assert [f.name for f in files] == [Path(u).name + ".parquet" for u in info.urls]
    # the scores are the scorer's own, sample by sample, in tar order
    scorer = UniFilterScorer.from_pretrained(root / "scorer").eval()
    for url in info.urls:
        keys, scores = _scores(score_path(out, url))
        samples = list(ShardStream(url, shuffle_shards=False, epochs=1))
        assert keys == [s["__key__"] for s in samples]
        with torch.no_grad():
            want = scorer.score([f"<image> {s['txt']}" for s in samples],
                                torch.stack([scorer.preprocess(s["image"]) for s in samples]))
        assert torch.allclose(torch.tensor(scores), want, atol=1e-5)
    # re-running skips every scored tar; a lost file and a crashed writer's .partial are redone
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[1].unlink()
    (out / (Path(info.urls[0]).name + ".parquet.partial")).write_bytes(b"half")
    capsys.readouterr()
    _run("score", "--scorer", str(root / "scorer"), "--shards", info.pattern, "--out", str(out), "--no-progress")
    said = capsys.readouterr().out
    assert "1 scored (10 samples, 0 unscorable" in said and "2 already scored" in said
    assert files[0].stat().st_mtime_ns == stamps[files[0]] and files[1].is_file()
    assert not list(out.glob("*.partial"))


def test_filter_keeps_the_samples_above_the_rule_byte_for_byte(data, tmp_path):
    root, info = data
    out = tmp_path / "scores"
    _run("score", "--scorer", str(root / "scorer"), "--shards", info.pattern, "--out", str(out), "--no-progress")
    all_scores = [_scores(score_path(out, u)) for u in info.urls]
    flat = sorted(s for _, sc in all_scores for s in sc)
    threshold = flat[len(flat) // 2]  # the median: about half kept
    kept_dir = tmp_path / "kept"
    _run("filter", "--shards", info.pattern, "--scores", str(out), "--out", str(kept_dir), "--min-score",
         str(threshold), "--maxcount", "7", "--no-progress")
    want = [(k, u) for u, (keys, sc) in zip(info.urls, all_scores) for k, s in zip(keys, sc) if s >= threshold]
    manifest = read_manifest(kept_dir)
    assert manifest["total"] == len(want) and manifest["meta"]["kept"] == len(want)
    assert manifest["meta"]["dropped_below"] == N - len(want) and manifest["meta"]["min_score"] == threshold
    source = {k: m for u in info.urls for k, m in _scan_tar(u, want=lambda i: True)}
    got = [(k, m) for s in manifest["shards"] for k, m in _scan_tar(str(kept_dir / s["name"]), want=lambda i: True)]
    assert [k for k, _ in got] == [k for k, _ in want]  # original order
    assert all(m == source[k] for k, m in got)  # every member byte for byte
    # the top fraction: ceil(f * n) samples, the highest scores
    top_dir = tmp_path / "top"
    _run("filter", "--shards", info.pattern, "--scores", str(out), "--out", str(top_dir), "--top-fraction", "0.25",
         "--no-progress")
    assert read_manifest(top_dir)["total"] == math.ceil(0.25 * N)
    # readable by open_clip's trainer (sizes.json gives the sample count)
    ocdata = pytest.importorskip("open_clip_train.data")
    import open_clip
    from torchvision import transforms

    args = argparse.Namespace(train_data=str(kept_dir / read_manifest(kept_dir)["pattern"]), val_data=None,
                              train_num_samples=None, dataset_resampled=False, train_data_upsampling_factors=None,
                              seed=0, batch_size=2, workers=0, world_size=1)
    pre = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24), transforms.ToTensor()])
    loader = ocdata.get_wds_dataset(args, pre, is_train=True, epoch=0,
                                    tokenizer=open_clip.get_tokenizer("ViT-B-32")).dataloader
    images, texts = next(iter(loader))
    assert images.shape == (2, 3, 24, 24) and texts.shape == (2, 77)


def test_keep_masks_rules():
    scores = [[0.5, float("nan"), 2.0], [2.0, 3.0]]
    assert keep_masks(scores, min_score=2.0) == [[False, False, True], [True, True]]
    # top 50 % of the 4 scored: 3.0 then the first 2.0 (earlier tar wins the tie); NaN never kept
    assert keep_masks(scores, top_fraction=0.5) == [[False, False, True], [False, True]]
    with pytest.raises(ValueError):
        keep_masks(scores)


def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        _run(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    root, info = data
    scores = tmp_path / "scores"
    _run("score", "--scorer", str(root / "scorer"), "--shards", info.pattern, "--out", str(scores), "--no-progress")
    capsys.readouterr()
    filt = ("filter", "--shards", info.pattern, "--scores", str(scores), "--out")
    assert "--top-fraction: must be in (0, 1]" in _fails(capsys, *filt, str(tmp_path / "k"), "--top-fraction", "0")
    assert "not allowed with argument" in _fails(capsys, *filt, str(tmp_path / "k"), "--top-fraction", "0.5",
                                                 "--min-score", "1")
    assert "--scorer nowhere: no such folder" in _fails(capsys, "score", "--scorer", "nowhere", "--shards",
                                                         info.pattern, "--out", str(scores))
    err = _fails(capsys, "score", "--scorer", str(root / "scorer"), "--shards", str(tmp_path / "none-{0..2}.tar"),
                 "--out", str(scores))
    assert err.startswith("synthloop: error: --shards ") and "none-0.tar" in err
    # an existing output is not overwritten without --overwrite
    _run(*filt, str(tmp_path / "k"), "--min-score", "-100", "--no-progress")
    assert "pass --overwrite" in _fails(capsys, *filt, str(tmp_path / "k"), "--min-score", "1")
    # a missing score file names the tar
    lost = score_path(scores, info.urls[2])
    lost.rename(tmp_path / "moved.parquet")
    assert f"{os.path.normpath(info.urls[2])}: no score file" in _fails(capsys, *filt, str(tmp_path / "k2"),
                                                                         "--min-score", "1")
    (tmp_path / "moved.parquet").rename(lost)
    # a score file that is not Parquet
    bad = tmp_path / "bad_scores"
    bad.mkdir()
    for u in info.urls:
        score_path(bad, u).write_bytes(b"not parquet")
    assert "not a readable synthloop score file" in _fails(capsys, "filter", "--shards", info.pattern, "--scores",
                                                           str(bad), "--out", str(tmp_path / "k3"), "--min-score", "1")


def test_a_changed_tar_is_never_used(data, tmp_path, capsys):
    root, info = data
    shards = tmp_path / "shards"
    shards.mkdir()
    for u in info.urls + [os.path.join(info.out_dir, "manifest.json")]:
        (shards / Path(u).name).write_bytes(Path(u).read_bytes())
    pattern = str(shards / Path(info.pattern).name)
    scores = tmp_path / "scores"
    _run("score", "--scorer", str(root / "scorer"), "--shards", pattern, "--out", str(scores), "--no-progress")
    capsys.readouterr()
    tar = shards / Path(info.urls[1]).name
    blob = bytearray(tar.read_bytes())
    blob[700] ^= 1  # one byte inside the first member's data: the tar structure still reads
    tar.write_bytes(bytes(blob))
    err = _fails(capsys, "filter", "--shards", pattern, "--scores", str(scores), "--out", str(tmp_path / "k"),
                 "--min-score", "0")
    assert f"{tar}: its sha256 differs from the one in" in err
    err = _fails(capsys, "score", "--scorer", str(root / "scorer"), "--shards", pattern, "--out", str(scores))
    assert "sha256 differs" in err


def test_torchrun_ranks_score_each_tar_once(data, tmp_path):
    root, info = data
    out = tmp_path / "scores"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                           "-m", "train.cli", "score", "--scorer", str(root / "scorer"), "--shards", info.pattern,
                           "--out", str(out), "--no-progress", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2: 2 tar(s), 2 scored (20 samples" in proc.stdout
    assert "rank 1/2: 1 tar(s), 1 scored (10 samples" in proc.stdout
    assert sorted(f.name for f in out.glob("*.parquet")) == sorted(Path(u).name + ".parquet" for u in info.urls)
