"""Every CLIP synthloop trains is usable by the standard clients with no glue (docs/clip_clients.md):

* open_clip itself loads the run's ``clip_final.open_clip/`` folder (``local-dir:``) in a process that never
  imports ``models.clip`` (so synthloop's tiny configs are NOT registered) and gives our features exactly;
* open_clip's own trainer (``python -m open_clip_train.main --model local-dir:...``) starts from those weights
  and trains on our WebDataset shards;
* CLIP_benchmark (``clip_benchmark eval --model local-dir:... --dataset wds/<family>``) scores a world family
  exported by ``synthloop datagen clip-benchmark`` with the accuracy synthloop's own evaluator gives.

The client tools run as their own processes, through their own entry points, and each such process checks at
its end that no synthloop module was imported and that open_clip never heard of ``synthloop-micro-vit32``
(``_NO_GLUE``): the folder alone describes the model.

One micro CLIP is trained once for the module (``tests/configs/clip_micro.yaml``, 4 steps, ~15-30 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/clip_micro.yaml"
MODEL = "synthloop-micro-vit32"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2", "HOME": os.environ.get("HOME", "/tmp")}


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # timeout: open_clip_train retries missing shards forever instead of failing
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())


# appended to a client's entry point: fail (exit 3) if the client needed synthloop to load our model
_NO_GLUE = f"""
import open_clip
_glue = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "datagen", "train", "tests"))
print("no-glue check: synthloop modules imported:", _glue, "| open_clip knows {MODEL}:",
      {MODEL!r} in open_clip.list_models(), flush=True)
if _glue or {MODEL!r} in open_clip.list_models():
    sys.exit(3)
"""


def _client(call: str, argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a client tool's own Python entry point (``call`` sees ``argv``) in a fresh interpreter, then _NO_GLUE.
    The working directory is a temporary one, so the repository is not on its path either."""
    script = f"import sys\nargv = {argv!r}\nsys.argv = ['client', *argv]\n{call}\n{_NO_GLUE}"
    return _run([sys.executable, "-c", script], cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 4-step micro CLIP run; its export: clip_final.pt + clip_final.open_clip/."""
    tmp = tmp_path_factory.mktemp("clip_run")
    proc = _run([sys.executable, "-m", "train.cli", "fit", "--config", str(MICRO), f"--trainer.default_root_dir={tmp}",
                 f"--trainer.logger.init_args.save_dir={tmp}"], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "clip_micro" / "version_0"
    assert f"open_clip local-dir:  {run / 'clip_final.open_clip'}" in proc.stdout
    return run


def _features(model, preprocess, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    from datagen.world import build_eval_set

    images, _ = build_eval_set("color", n_per_class=1, seed=7, image_size=32)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenizer(["a photo of a red cube.", "a rendering of two spheres."]))
    return img, txt


def test_open_clip_loads_the_local_dir_without_synthloop(run_dir, tmp_path):
    folder = run_dir / "clip_final.open_clip"
    assert sorted(p.name for p in folder.iterdir()) == ["checksums.sha256", "open_clip_config.json",
                                                        "open_clip_model.safetensors"]
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["image_size"] == 32 and cfg["synthloop"]["model_name"] == MODEL
    assert cfg["synthloop"]["step"] == 4
    script = f"""
import sys, torch, open_clip
sys.path.insert(0, {str(ROOT)!r})
assert "models.clip" not in sys.modules and {MODEL!r} not in open_clip.list_models()
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{folder}")
model.eval()
tokenizer = open_clip.get_tokenizer("local-dir:{folder}")
from tests.test_clip_clients import _features
assert "models.clip" not in sys.modules and {MODEL!r} not in open_clip.list_models()
img, txt = _features(model, preprocess, tokenizer)
torch.save({{"img": img, "txt": txt, "logit_scale": model.logit_scale.detach()}}, "features.pt")
"""
    proc = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "features.pt", weights_only=True)

    from models.clip import create_clip

    ours = create_clip(MODEL, pretrained=str(run_dir / "clip_final.pt"))
    ours.model.eval()
    img, txt = _features(ours.model, ours.preprocess_val, ours.tokenizer)
    assert torch.equal(theirs["img"], img) and torch.equal(theirs["txt"], txt)
    assert torch.equal(theirs["logit_scale"], ours.model.logit_scale.detach())


def test_local_dir_writer_replaces_atomically_and_keeps_forced_size(tmp_path):
    import open_clip

    from models.clip import create_clip, save_open_clip_local_dir

    bundle = create_clip(MODEL, force_image_size=48)
    folder = tmp_path / "m.open_clip"
    folder.mkdir()
    (folder / "stale.bin").write_bytes(b"old")  # a previous folder is replaced whole, not merged
    save_open_clip_local_dir(bundle.model, folder, MODEL, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.open_clip"]  # no partial folder left behind
    assert not (folder / "stale.bin").exists()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert model.visual.image_size == (48, 48)
    im = Image.new("RGB", (48, 48), (200, 10, 30))
    assert torch.equal(preprocess(im), bundle.preprocess_val(im))


def test_every_tiny_model_round_trips_through_a_local_dir_without_synthloop(tmp_path):
    """All of synthloop's tiny configs (the quickstart's ResNet included), written by save_open_clip_local_dir and
    loaded by open_clip alone in one fresh process: the same image and text features, the same preprocessing."""
    from models.clip import TINY_MODELS, create_clip, save_open_clip_local_dir

    torch.manual_seed(0)
    ours = {}
    for name in TINY_MODELS:
        bundle = create_clip(name)
        bundle.model.eval()
        save_open_clip_local_dir(bundle.model, tmp_path / f"{name}.open_clip", name)
        x = torch.rand(2, 3, bundle.image_size, bundle.image_size)
        im = Image.fromarray((np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3))
        with torch.no_grad():
            ours[name] = (x, bundle.model.encode_image(x), bundle.model.encode_text(bundle.tokenizer(["a red cube."])),
                          bundle.preprocess_val(im))
    torch.save({k: v[0] for k, v in ours.items()}, tmp_path / "inputs.pt")
    script = f"""
import sys, numpy as np, torch, open_clip
from PIL import Image
im = Image.fromarray((np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3))
out = {{}}
for name, x in torch.load("inputs.pt", weights_only=True).items():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{name}}.open_clip")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{{name}}.open_clip")
    with torch.no_grad():
        out[name] = (model.encode_image(x), model.encode_text(tokenizer(["a red cube."])), preprocess(im))
torch.save(out, "outputs.pt")
{_NO_GLUE}"""
    proc = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    theirs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert sorted(theirs) == sorted(TINY_MODELS)
    for name, (_, img, txt, pre) in ours.items():
        assert all(torch.equal(a, b) for a, b in zip(theirs[name], (img, txt, pre))), name


def test_open_clip_trainer_starts_from_the_local_dir_on_our_shards(run_dir, tmp_path):
    import open_clip

    from datagen.cli import main as datagen_main

    shards = tmp_path / "shards"
    datagen_main(["world", "--out", str(shards), "--n", "16", "--maxcount", "8", "--no_progress",
                  "--generator.init_args.image_size", "32"])
    folder = run_dir / "clip_final.open_clip"
    # = python -m open_clip_train.main --model local-dir:<folder> ...: 2 steps of 8 on our 2 shards, CPU
    argv = ["--model", f"local-dir:{folder}", "--train-data", f"{shards}/shard-{{000000..000001}}.tar",
            "--train-num-samples", "16", "--dataset-type", "webdataset", "--batch-size", "8", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--lr", "1e-3", "--warmup", "1", "--zeroshot-frequency", "0",
            "--report-to", "", "--logs", str(tmp_path / "logs"), "--name", "from-synthloop"]
    proc = _client("from open_clip_train.main import main\nif main(argv) not in (None, 0): sys.exit(1)", argv,
                   tmp_path, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "no-glue check: synthloop modules imported: [] | open_clip knows synthloop-micro-vit32: False" in log
    assert f"Loading full pretrained weights from: {folder}/open_clip_model.safetensors" in log  # no --pretrained
    assert "Train Epoch: 0 [16/16 (100%)]" in log
    print("\nopen_clip_train printed:\n" + "\n".join(line for line in log.splitlines()
                                                  if "Loading full pretrained" in line or "Train Epoch" in line))
    ckpt = tmp_path / "logs" / "from-synthloop" / "checkpoints" / "epoch_1.pt"
    assert ckpt.is_file(), log[-3000:]
    start, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    trained, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    open_clip.load_checkpoint(trained, str(ckpt))  # open_clip's own checkpoint of the same architecture
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert moved  # it trained


def _clip_benchmark(folder: Path, datasets: list[str], root: str, cwd: Path,
                    console_script: bool = False) -> subprocess.CompletedProcess:
    """``clip_benchmark eval --model local-dir:<folder> --dataset wds/<d>... --dataset_root <root>`` in fp32
    (``--no_amp``, as synthloop's validation); ``console_script``: the installed ``clip_benchmark`` command itself,
    else its Python entry point (``clip_benchmark.cli.main``) followed by the no-glue check."""
    argv = ["eval", "--model", f"local-dir:{folder}", "--pretrained", "", "--dataset", *[f"wds/{d}" for d in datasets],
            "--dataset_root", root, "--task", "zeroshot_classification", "--output", "{dataset}.json", "--no_amp",
            "--num_workers", "0", "--batch_size", "64"]
    if console_script:
        return _run([str(BIN / "clip_benchmark"), *argv], cwd=cwd)
    return _client("from clip_benchmark.cli import main\nmain()", argv, cwd)


def _centered(bundle, families) -> None:
    """Shift the visual tower's last LayerNorm bias so that the image features of a calibration set (train split)
    have zero mean. A 4-step micro CLIP maps every image to nearly the same feature (cosine > 0.997), so all its
    zero-shot predictions are one class and any two evaluators "agree"; centred, its predictions spread over the
    classes and agreeing means agreeing image by image. (Still an ordinary open_clip CLIP, same architecture.)"""
    from datagen.world import build_eval_set

    images = []
    for family in families:
        ims, _ = build_eval_set(family, n_per_class=4, seed=99, image_size=bundle.image_size, split="train")
        images += [bundle.preprocess_val(im) for im in ims]
    ln = bundle.model.visual.ln_post
    outs = []
    handle = ln.register_forward_hook(lambda mod, inp, out: outs.append(out.detach()))
    with torch.no_grad():
        bundle.model.encode_image(torch.stack(images))
        handle.remove()
        out = outs[0]
        pooled = out[:, 0] if out.ndim == 3 else out  # ln_post runs on every token; the class token is pooled
        ln.bias -= pooled.mean(0)


def test_clip_benchmark_matches_our_zero_shot_accuracy(run_dir, tmp_path):
    """Every world family, exported by ``synthloop datagen clip-benchmark``, scored by CLIP_benchmark on the exported
    local-dir: the same accuracy as ``train.clip.zeroshot`` on the same checkpoint, exactly (same items, class names,
    templates, pixels, fp32)."""
    from datagen.cli import main as datagen_main
    from datagen.world import TASK_FAMILIES
    from models.clip import (create_clip, local_dir_beside, save_open_clip_checkpoint, save_open_clip_local_dir,
                             zero_shot_classifier)
    from train.clip.zeroshot import build_world_eval_sets, zero_shot_accuracy, zero_shot_correct

    families, n = list(TASK_FAMILIES), 8  # n images per class: 296 images in all
    bundle = create_clip(MODEL, pretrained=str(run_dir / "clip_final.pt"))
    bundle.model.eval()
    _centered(bundle, families)
    ckpt = save_open_clip_checkpoint(bundle.model, tmp_path / "centred.pt", MODEL)
    folder = save_open_clip_local_dir(bundle.model, local_dir_beside(ckpt), MODEL)
    for family in families:
        datagen_main(["clip-benchmark", "--family", family, "--n_per_class", str(n), "--image_size", "32",
                      "--out", str(tmp_path / "cb" / family)])
    proc = _clip_benchmark(folder, families, str(tmp_path / "cb" / "{dataset}"), tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "no-glue check: synthloop modules imported: [] | open_clip knows synthloop-micro-vit32: False" in log
    theirs = {f: json.loads((tmp_path / f"{f}.json").read_text())["metrics"]["acc1"] for f in families}

    ours_bundle = create_clip(MODEL, pretrained=str(ckpt))  # our evaluator on our own checkpoint of that model
    ours_bundle.model.eval()
    sets = build_world_eval_sets(families, n, 1234, ours_bundle.image_size, ours_bundle.preprocess_val)
    cpu = torch.device("cpu")
    rows, ours, spread = [], {}, {}
    for es in sets:
        ours[es.name] = zero_shot_accuracy(ours_bundle.model, ours_bundle.tokenizer, es, cpu)
        correct = zero_shot_correct(ours_bundle.model, ours_bundle.tokenizer, es, cpu)
        clf = zero_shot_classifier(ours_bundle.model, ours_bundle.tokenizer, es.classnames, es.templates, cpu)
        with torch.no_grad():
            spread[es.name] = len(set((ours_bundle.model.encode_image(es.images) @ clf.T).argmax(-1).tolist()))
        rows.append(f"{es.name:9s} {len(es.labels):3d} images, {spread[es.name]:2d} classes predicted: ours "
                    f"{int(correct.sum()):3d} = {100 * ours[es.name]:5.1f}%, CLIP_benchmark "
                    f"{round(theirs[es.name] * len(es.labels)):3d} = {100 * theirs[es.name]:5.1f}%")
    print("\n" + "\n".join(rows))
    assert ours == theirs, "\n".join(rows)  # exactly, family by family
    # not a degenerate agreement: the centred model is right on some classes and wrong on others in most families
    assert sum(0 < a < 1 for a in ours.values()) >= 5 and sum(v >= 3 for v in spread.values()) >= 4, rows


def test_clip_benchmark_reads_a_run_export(run_dir, tmp_path):
    """The run's own clip_final.open_clip/ on the run's own validation sets, through the installed ``clip_benchmark``
    command: the same number of correct images as the validation table stored in clip_final.pt."""
    from datagen.cli import main as datagen_main

    for family in ("shape", "color"):  # tests/configs/clip_micro.yaml: eval_per_class 4, eval_seed 1234, 32 px
        datagen_main(["clip-benchmark", "--family", family, "--n_per_class", "4", "--image_size", "32",
                      "--out", str(tmp_path / "cb" / family)])
    proc = _clip_benchmark(run_dir / "clip_final.open_clip", ["shape", "color"], str(tmp_path / "cb" / "{dataset}"),
                           tmp_path, console_script=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_zero_shot = torch.load(run_dir / "clip_final.pt", weights_only=True)["zero_shot"]  # float32 ratios
    for family, n in (("shape", 3 * 4), ("color", 8 * 4)):
        acc = json.loads((tmp_path / f"{family}.json").read_text())["metrics"]["acc1"]
        assert acc * n == round(acc * n) and round(acc * n) == round(run_zero_shot[family] * n), \
            (family, run_zero_shot, acc)


def test_clip_benchmark_layout_of_an_image_folder(tmp_path):
    from clip_benchmark.datasets.builder import build_wds_dataset

    from datagen.cli import main as datagen_main

    root = tmp_path / "mtil"
    ds = root / "Toy"
    rng = np.random.default_rng(0)
    files = {}
    for label in range(3):
        (ds / "test" / f"{label:03d}").mkdir(parents=True)
        for i in range(2 + label):
            arr = rng.integers(0, 255, (8 + i, 9, 3), dtype=np.uint8)
            ext = "png" if (i + label) % 2 else "jpg"
            path = ds / "test" / f"{label:03d}" / f"{i:06d}.{ext}"
            Image.fromarray(arr).save(path)
            files[path] = label
    (ds / "classnames.txt").write_text("red thing\nblue {thing}\ngreen thing\n")
    (ds / "templates.txt").write_text("a photo of a {}.\na {} in braces {{x}}.\n")
    out = tmp_path / "cb"
    summary = datagen_main(["clip-benchmark", "--image_folder", str(root), "--dataset", "Toy", "--out", str(out),
                            "--maxcount", "4"])
    assert summary["samples"] == 9 and summary["shards"] == 3
    assert (out / "test" / "nshards.txt").read_text().strip() == "3"
    assert (out / "classnames.txt").read_text().splitlines() == ["red thing", "blue {thing}", "green thing"]
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == ["a photo of a {c}.", "a {c} in braces {{x}}."]
    assert templates[1].format(c="cat") == "a {} in braces {{x}}.".format("cat")  # the prompt synthloop makes
    # bytes copied unchanged, in index_split's order, with their own extension
    members = []
    for i in range(3):
        with tarfile.open(out / "test" / f"{i}.tar") as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    images = [(n, b) for n, b in members if not n.endswith(".cls")]
    assert [b for _, b in images] == [p.read_bytes() for p in sorted(files)]
    assert [n.split(".")[1] for n, _ in images] == [p.suffix[1:] for p in sorted(files)]
    # CLIP_benchmark's own reader: labels, class names, templates
    dataset = build_wds_dataset("Toy", transform=lambda im: im.size, split="test", data_dir=str(out))
    got = list(dataset)
    assert [label for _, label in got] == [files[p] for p in sorted(files)]
    assert dataset.classes == ["red thing", "blue {thing}", "green thing"] and dataset.templates == templates
    # a second run into the same split is refused; --overwrite replaces it
    from models.errors import UserError

    with pytest.raises(UserError, match="--out: .*already exists; pass --overwrite"):
        datagen_main(["clip-benchmark", "--image_folder", str(root), "--dataset", "Toy", "--out", str(out)])
    s2 = datagen_main(["clip-benchmark", "--image_folder", str(root), "--dataset", "Toy", "--out", str(out),
                       "--overwrite", "--max_per_class", "1"])
    assert s2["samples"] == 3 and s2["per_class"] == [1, 1, 1]
    assert sorted(p.name for p in out.iterdir()) == ["classnames.txt", "synthloop_clip_benchmark.json", "test",
                                                     "zeroshot_classification_templates.txt"]


@pytest.mark.parametrize("args, expected", [
    (["--family", "shap"], "--family: unknown task family 'shap'"),
    (["--family", "shape", "--image_size", "8"], "--image_size: "),
    (["--family", "shape", "--dataset", "Aircraft"], "--dataset: only with --image_folder"),
    (["--image_folder", "{tmp}/none", "--dataset", "Aircraft"], "--image_folder: {tmp}/none is not a directory"),
    (["--image_folder", "{tmp}", "--dataset", "Aircraft"], "--image_folder/--dataset: dataset folder"),
    (["--image_folder", "{tmp}"], "--dataset: required with --image_folder"),
    (["--image_folder", "{tmp}", "--dataset", "A", "--image_size", "32"], "--image_size: only with --family"),
    (["--family", "shape"], "--image_size: required with --family"),
    (["--image_folder", "{tmp}", "--dataset", "A", "--split", "val"], "--split: val only with --family"),
], ids=["unknown-family", "bad-size", "dataset-with-family", "no-root", "no-dataset-folder", "no-dataset",
        "world-option-for-folder", "no-size", "val-for-folder"])
def test_clip_benchmark_bad_input_is_one_line(tmp_path, args, expected):
    from datagen.cli import main as datagen_main
    from models.errors import UserError

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(UserError) as info:
        datagen_main(["clip-benchmark", *args, "--out", str(tmp_path / "out")])
    msg = str(info.value)
    assert expected.replace("{tmp}", str(tmp_path)) in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_clip_benchmark_splits_of_one_dataset_share_its_class_names(tmp_path):
    from clip_benchmark.datasets.builder import build_wds_dataset

    from datagen.cli import main as datagen_main
    from datagen.world import build_eval_set
    from models.errors import UserError

    out = tmp_path / "cb"
    common = ["--n_per_class", "2", "--image_size", "32", "--out", str(out)]
    datagen_main(["clip-benchmark", "--family", "shape", *common])
    datagen_main(["clip-benchmark", "--family", "shape", "--split", "val", *common])
    for split in ("test", "val"):  # CLIP_benchmark reads either split: synthloop's pixels, labels and names
        got = list(build_wds_dataset("shape", transform=lambda im: np.asarray(im), split=split, data_dir=str(out)))
        images, labels = build_eval_set("shape", n_per_class=2, seed=1234, image_size=32, split=split)
        assert [label for _, label in got] == labels
        assert all(np.array_equal(a, np.asarray(b)) for (a, _), b in zip(got, images))
    with pytest.raises(UserError) as info:  # another family's classes would relabel the shape splits
        datagen_main(["clip-benchmark", "--family", "color", "--split", "train", *common])
    msg = str(info.value)
    assert msg.startswith(f"{out / 'classnames.txt'}: lists other class names than this export") and "\n" not in msg
    assert not (out / "train").exists()
    with pytest.raises(UserError, match="--overwrite"):  # an existing split is kept unless asked
        datagen_main(["clip-benchmark", "--family", "shape", *common])
    datagen_main(["clip-benchmark", "--family", "shape", "--overwrite", *common[2:], "--n_per_class", "1"])
    assert (out / "classnames.txt").read_text().splitlines() == ["cube", "sphere", "cylinder"]
    info = json.loads((out / "synthloop_clip_benchmark.json").read_text())
    assert info["test"]["samples"] == 3 and info["val"]["samples"] == 6  # each split's own record


def test_clip_benchmark_command_exit_code(tmp_path):
    proc = _run([sys.executable, "-m", "train.cli", "datagen", "clip-benchmark", "--family", "shap", "--out",
                 str(tmp_path / "x")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "synthloop: error: --family: unknown task family 'shap'; valid: ['color', 'count', 'digits', 'material', "
        "'relation', 'shape', 'size']"]


def test_clip_benchmark_help_is_light():
    code = ("import sys\nfrom datagen import cli\ntry:\n    cli.main(['clip-benchmark', '--help'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'numpy', 'PIL', 'open_clip', 'webdataset') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--family" in proc.stdout and "--image_folder" in proc.stdout and "wds/<name>" in proc.stdout


def test_template_conversion():
    from datagen.clip_benchmark import to_clip_benchmark_template
    from datagen.world import TASK_FAMILIES
    from models.errors import UserError

    for fam in TASK_FAMILIES.values():
        for t in fam.templates:
            converted = to_clip_benchmark_template(t)
            assert all(converted.format(c=c) == t.format(c) for c in fam.classnames)
    assert to_clip_benchmark_template('the number "{}" {{x}}') == 'the number "{c}" {{x}}'
    for bad in ("no placeholder", "{} and {}", "{name}"):
        with pytest.raises(UserError, match="exactly one"):
            to_clip_benchmark_template(bad)


def test_constraints_pin_numpy_for_clip_benchmark():
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["numpy"].startswith("2.3."), pins["numpy"]  # clip-benchmark 1.6.2 breaks under numpy 2.4
    assert "clip-benchmark" in pins
