"""WebDataset shard export/import (datagen.shards): round trip, placement, resume, damage, atomicity, open_clip."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from datagen.shards import ShardStream, export_stream, read_manifest, write_shards
from datagen.stream import GeneratorStream, strip_bookkeeping, take

COLOURS = ["red", "green", "blue", "yellow", "purple"]


class TinyGenerator:
    """A random-colour square with a caption; a pure function of (rng, index)."""

    def generate(self, rng: np.random.Generator, index: int) -> dict:
        rgb = rng.integers(0, 256, size=3)
        arr = np.empty((16, 16, 3), np.uint8)
        arr[:] = rgb
        arr[4:8, 4:8] = 255 - rgb  # some structure, so the JPEG check is not trivially exact
        label = int(rng.integers(0, len(COLOURS)))
        return {
            "image": Image.fromarray(arr),
            "image_original": Image.fromarray(arr[::-1].copy()),
            "txt": f"a {COLOURS[label]} square number {index}",
            "json": {"rgb": [int(c) for c in rgb], "index": index},
            "label": label,
        }


def export(tmp_path, n=23, maxcount=5, name="out", **kw):
    out = tmp_path / name
    info = export_stream(TinyGenerator(), n, out, seed=3, maxcount=maxcount, progress=False, **kw)
    return out, info


def reference(n=23):
    return [strip_bookkeeping(s) for s in take(GeneratorStream(TinyGenerator(), seed=3), n)]


def read_all(stream):
    return list(stream)


def keys(samples):
    return [s["__key__"] for s in samples]


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_round_trip(tmp_path, fmt):
    out, info = export(tmp_path, image_format=fmt, meta={"note": "test"})
    assert info.shards == [f"shard-{i:06d}.tar" for i in range(5)]
    assert info.counts == [5, 5, 5, 5, 3] and info.total == 23
    man = read_manifest(out)
    assert man["total"] == 23 and man["image_format"] == fmt and man["meta"]["note"] == "test"
    assert man["meta"]["seed"] == 3 and [s["count"] for s in man["shards"]] == info.counts
    assert os.path.exists(out / "sizes.json")
    assert sorted(os.listdir(out)) == sorted(info.shards + ["manifest.json", "sizes.json"])  # no temp files left

    got = read_all(ShardStream(info.pattern, epochs=1, shuffle_shards=False))
    ref = reference()
    assert keys(got) == keys(ref)
    for g, r in zip(got, ref):
        assert g["txt"] == r["txt"] and g["json"] == r["json"] and g["label"] == r["label"]
        assert g["__url__"].endswith(".tar")
        for f in ("image", "image_original"):
            a, b = np.asarray(g[f], dtype=np.int16), np.asarray(r[f], dtype=np.int16)
            assert g[f].mode == "RGB" and a.shape == b.shape
            if fmt == "png":
                assert np.array_equal(a, b)
            else:
                assert np.abs(a - b).mean() < 10  # lossy, and chroma subsampling smears the sharp inner square
    # a directory and a glob name the same shards; shuffling changes order, not content
    assert keys(read_all(ShardStream(out, epochs=1, shuffle_shards=False))) == keys(ref)
    shuffled = keys(read_all(ShardStream(str(out / "*.tar"), epochs=1, seed=1)))
    assert sorted(shuffled) == sorted(keys(ref))


@pytest.mark.parametrize("maxcount", [5, 12])  # 5 shards >= 4 slots (shard mode); 2 shards < 4 slots (striding)
def test_two_ranks_two_workers_partition(tmp_path, maxcount):
    out, info = export(tmp_path, maxcount=maxcount)
    seen = []
    for rank in range(2):
        stream = ShardStream(info.pattern, epochs=1, seed=5)
        stream.set_rank(rank, 2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        for s in loader:
            assert s["__slot__"] in (2 * rank, 2 * rank + 1)
            seen.append(s["__key__"])
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(keys(reference()))


@pytest.mark.parametrize("maxcount,rank,world", [(4, 0, 1), (4, 1, 2), (12, 2, 3)])
@pytest.mark.parametrize("k", [1, 7, 15])
def test_resume_matches_uninterrupted(tmp_path, maxcount, rank, world, k):
    out, info = export(tmp_path, maxcount=maxcount)

    def stream(start=None):
        s = ShardStream(info.pattern, epochs=3, seed=11)
        s.set_rank(rank, world)  # in the main process: slot = rank, n_slots = world
        if start is not None:
            s.start_positions[rank] = start
        return s

    full = [(s["__key__"], s["__pos__"]) for s in stream()]
    assert len(full) > k
    first = full[:k]
    rest = [(s["__key__"], s["__pos__"]) for s in stream(start=first[-1][1] + 1)]
    assert first + rest == full
    if world == 1:  # one slot sees every sample once per epoch, in a shard order reshuffled per epoch
        epochs = [[key for key, _ in full[i * 23 : (i + 1) * 23]] for i in range(3)]
        assert len(full) == 69 and all(sorted(e) == sorted(epochs[0]) for e in epochs)
        assert len({tuple(e) for e in epochs}) > 1


def test_truncated_shard_is_skipped_and_counted(tmp_path, caplog):
    out, info = export(tmp_path, n=20, maxcount=5)
    bad = out / info.shards[1]
    bad_keys = set(keys(read_all(ShardStream(str(bad), epochs=1))))
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:
        f.truncate(size // 2)
    stream = ShardStream(info.pattern, epochs=1, shuffle_shards=False)
    with caplog.at_level(logging.WARNING):
        got = read_all(stream)
    good = [k for k in keys(reference(20)) if k not in bad_keys]
    assert [k for k in keys(got) if k not in bad_keys] == good
    assert stream.corrupt_shards == 1 and stream.corrupt_shard_urls == {str(bad)}
    assert any("corrupt shard" in r.message and info.shards[1] in r.message for r in caplog.records)
    assert got[-1]["__corrupt_shards__"] == 1
    # positions stay exact across the damage: resume in the middle of it equals an uninterrupted read
    two_epochs = ShardStream(info.pattern, epochs=2, shuffle_shards=False)
    full = [(s["__key__"], s["__pos__"]) for s in read_all(two_epochs)]
    assert two_epochs.corrupt_shards == 1  # distinct damaged shards, not one per epoch
    for k in (3, 6, 9, 14):
        s2 = ShardStream(info.pattern, epochs=2, shuffle_shards=False)
        s2.start_positions[0] = full[k - 1][1] + 1
        assert full[:k] + [(s["__key__"], s["__pos__"]) for s in s2] == full


def test_a_changed_byte_the_tar_format_cannot_see_is_caught_by_the_manifest_checksum(tmp_path, caplog):
    out, info = export(tmp_path, n=20, maxcount=5)
    assert all(len(s["sha256"]) == 64 for s in read_manifest(out)["shards"])
    bad = out / info.shards[1]
    data = bytearray(bad.read_bytes())
    at = data.index(b".txt") // 512 * 512 + 512  # a caption's first byte: its 512-byte tar header, then data
    data[at] ^= 0x01  # a caption letter changes; tar headers, the PNG CRCs and the structure are intact
    bad.write_bytes(bytes(data))
    bad_keys = set(keys(reference(20))[5:10])
    stream = ShardStream(str(out), epochs=1, shuffle_shards=False)
    with caplog.at_level(logging.WARNING):
        got = read_all(stream)
    assert set(keys(got)) == set(keys(reference(20))) - bad_keys  # the changed shard is skipped whole
    assert stream.corrupt_shard_urls == {str(bad)}
    assert any("sha256" in r.getMessage() and info.shards[1] in r.getMessage() for r in caplog.records)


def test_garbage_shards_and_bad_image(tmp_path, caplog):
    out, info = export(tmp_path, n=20, maxcount=5)
    rng = np.random.default_rng(0)
    # shard 1: nothing but garbage (fails to open); shard 2: garbage over its middle
    (out / info.shards[1]).write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    p2 = out / info.shards[2]
    data = bytearray(p2.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    p2.write_bytes(bytes(data))
    # an extra shard holding an undecodable image next to a good sample
    extra = out / "extra-000000.tar"
    with wds.TarWriter(str(extra)) as w:
        w.write({"__key__": "badimage", "jpg": b"definitely not a jpeg", "txt": "broken"})
        w.write({"__key__": "goodone", "png": Image.new("RGB", (4, 4)), "txt": "fine"})
    urls = [str(out / n) for n in info.shards] + [str(extra)]
    stream = ShardStream(urls, epochs=1, shuffle_shards=False)
    with caplog.at_level(logging.WARNING):
        got = read_all(stream)
    ref = keys(reference(20))
    got_keys = keys(got)
    assert ref[:5] + ref[15:] + ["goodone"] == [k for k in got_keys if k in ref[:5] + ref[15:] + ["goodone"]]
    assert "badimage" not in got_keys
    assert stream.corrupt_shards >= 1 and str(out / info.shards[1]) in stream.corrupt_shard_urls
    assert got[-1]["__dropped__"] >= 1  # the bad image (and any sample cut off by the damage) was counted
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert info.shards[1] in text and "badimage" in text and "extra-000000.tar" in text


def test_unreadable_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="matched no files"):
        ShardStream(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match="not found"):
        ShardStream(str(tmp_path / "shard-{000000..000003}.tar"))
    for i in range(2):
        (tmp_path / f"junk-{i:06d}.tar").write_bytes(b"\x01" * 2048)
    pattern = str(tmp_path / "junk-{000000..000001}.tar")
    with pytest.raises(RuntimeError, match="no shard of .*junk"):
        read_all(ShardStream(pattern, epochs=1))


class Crash(Exception):
    pass


def test_crash_mid_write_then_resume(tmp_path):
    ref_dir, ref_info = export(tmp_path, n=23, maxcount=5, name="ref")
    out = tmp_path / "crashy"

    def crashing(n_ok):
        for i, s in enumerate(reference(23)):
            if i == n_ok:
                raise Crash("generator died")
            yield s

    with pytest.raises(Crash):
        write_shards(crashing(13), out, maxcount=5, progress=False)
    # shards 0 and 1 are complete; shard 2 was in progress and must not exist under its name
    assert sorted(os.listdir(out)) == ["shard-000000.tar", "shard-000001.tar"]
    for n in ("shard-000000.tar", "shard-000001.tar"):
        assert (out / n).read_bytes() == (ref_dir / n).read_bytes()
    with pytest.raises(FileExistsError):
        write_shards(reference(23), out, maxcount=5, progress=False)
    # a killed process leaves a temp file behind; resume must ignore and remove it
    (out / "shard-000002.tar.tmp").write_bytes(b"half a shard")
    info = write_shards(iter(reference(23)), out, maxcount=5, progress=False, resume=True)
    assert info.resumed == 10 and info.shards == ref_info.shards and info.counts == ref_info.counts
    for n in ref_info.shards:
        assert (out / n).read_bytes() == (ref_dir / n).read_bytes()
    assert not any(n.endswith(".tmp") for n in os.listdir(out))
    assert read_manifest(out)["total"] == 23
    # resuming with different samples is refused instead of silently mixing two data sets
    with pytest.raises(ValueError, match="resume"):
        other = [dict(s, __key__=f"x{i}") for i, s in enumerate(reference(23))]
        write_shards(other, out, maxcount=5, progress=False, resume=True)


def test_open_clip_reads_our_shards(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    try:
        import pandas  # noqa: F401 (open_clip_train.data imports it at module level, for its CSV dataset only)
    except ImportError:
        # The WebDataset path never touches pandas; a stand-in keeps this check running where it is not installed.
        monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    ocdata = pytest.importorskip("open_clip_train.data")
    from torchvision import transforms

    out, info = export(tmp_path, n=23, maxcount=5)
    args = argparse.Namespace(
        train_data=info.pattern,
        val_data=None,
        train_num_samples=None,  # taken from our sizes.json
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=4,
        workers=0,
        world_size=1,
    )
    preprocess = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24), transforms.ToTensor()])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    data = ocdata.get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    assert data.dataloader.num_samples == 24  # 23 rounded up to full batches
    images, texts = next(iter(data.dataloader))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert texts.shape == (4, 77) and texts.dtype == torch.long


def test_package_names_and_durable_renames(tmp_path, monkeypatch):
    import datagen.shards as shards
    from datagen.shards import writer
    from models import io as mio

    # the package keeps the old module's public names
    for name in ("ShardStream", "write_shards", "export_stream", "read_manifest", "expand_urls", "encode_sample",
                 "decode_members", "CorruptShardError", "ShardSetInfo", "MANIFEST_NAME", "SIZES_NAME"):
        assert hasattr(shards, name), name
    # every shard rename and both json files go through models.io's directory fsync
    synced: list[tuple[str, str]] = []
    real = mio.fsync_dir
    monkeypatch.setattr(writer, "fsync_dir", lambda d: synced.append(("shard", os.path.abspath(d))) or real(d))
    monkeypatch.setattr(mio, "fsync_dir", lambda d: synced.append(("json", os.path.abspath(d))) or real(d))
    out, info = export(tmp_path, n=7, maxcount=3)
    assert synced == [("shard", str(out))] * 3 + [("json", str(out))] * 2
    assert sorted(os.listdir(out)) == ["manifest.json", *info.shards, "sizes.json"]
