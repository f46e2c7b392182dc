"""Classification datasets in CLIP_benchmark's local WebDataset layout (``synthloop datagen clip-benchmark``).

CLIP_benchmark (``clip_benchmark eval --dataset wds/<name> --dataset_root <out>``) reads::

    <out>/test/0.tar ... <out>/test/<N-1>.tar    members <key>.png|webp|jpg|jpeg (image) + <key>.cls (label)
    <out>/test/nshards.txt                       N
    <out>/classnames.txt                         one class name per line, label order
    <out>/zeroshot_classification_templates.txt  one template per line, "{c}" = the class name

(``clip_benchmark/datasets/builder.py``, ``build_wds_dataset``). Two sources are written that way:

* :func:`export_world_family`: a world task family's held-out evaluation set, exactly the images
  ``datagen.world.build_eval_set`` renders for synthloop's own zero-shot validation (same family, split,
  ``n_per_class``, ``seed`` and ``image_size``), stored losslessly (PNG or lossless WebP) by default, so
  CLIP_benchmark scores the very pixels ``train.clip.zeroshot`` scores;
* :func:`export_image_folder`: one dataset of the MTIL image-folder layout (``docs/mtil.md``,
  ``datagen.gift.folders``): its files are copied byte for byte (after checking that each decodes).

Templates are converted from synthloop's ``{}`` placeholder to CLIP_benchmark's ``{c}`` (other braces
escaped), and each converted template is checked to format to the same prompt. A split is built in
``<out>/.<split>.partial-<pid>/`` and renamed to ``<out>/<split>/`` when complete, so a reader never sees
half a split; ``train`` and ``test`` (and ``val``) may be written into the same ``<out>`` by separate runs
(CLIP_benchmark's linear probe reads train and test), and their class names and templates must then agree
(``--overwrite`` replaces a split, never the class names another split's labels refer to). Tar members are
written with fixed metadata (mtime 0, root owner), so the same arguments give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from models.errors import UserError
from models.io import atomic_write_json, atomic_write_text, fsync_dir

SPLITS = ("train", "val", "test")  # CLIP_benchmark reads any --split name; image folders have train/test
FOLDER_SPLITS = ("train", "test")
IMAGE_FORMATS = ("png", "webp", "jpg")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
NSHARDS_FILE = "nshards.txt"
INFO_FILE = "synthloop_clip_benchmark.json"  # what was exported, with which arguments (ignored by CLIP_benchmark)
DEFAULT_MAXCOUNT = 1000
# synthloop's own validation defaults (train.clip.pretrain.CLIPPretrain: eval_per_class, eval_seed)
DEFAULT_N_PER_CLASS = 40
DEFAULT_SEED = 1234


def to_clip_benchmark_template(template: str, key: str = "template") -> str:
    """``"a photo of a {}."`` -> ``"a photo of a {c}."``: CLIP_benchmark formats ``template.format(c=name)``
    where synthloop formats ``template.format(name)``; the result gives the same prompt for every class name
    (other braces are escaped). A template without exactly one ``{}`` field is a :class:`UserError` naming ``key``."""
    probe = "\x00class\x00"
    try:
        prompt = template.format(probe)
    except (IndexError, KeyError, ValueError, AttributeError):
        prompt = None
    if prompt is None or prompt.count(probe) != 1:
        raise UserError(f"{key}: template {template!r} must have exactly one '{{}}' placeholder for the class name "
                        f"and no other format fields")
    return prompt.replace("{", "{{").replace("}", "}}").replace(probe, "{c}")


def _check_lines(values: list[str], what: str) -> list[str]:
    """Class names / templates become one line each and CLIP_benchmark strips every line: refuse what would change."""
    if not values:
        raise UserError(f"{what}: empty list")
    for v in values:
        if not isinstance(v, str) or not v.strip() or v != v.strip() or "\n" in v or "\r" in v:
            raise UserError(f"{what}: {v!r} cannot be one line of a text file as CLIP_benchmark reads it "
                            f"(non-empty, no surrounding spaces, no line breaks)")
    return values


def _encode_image(image, image_format: str, jpeg_quality: int = 95) -> bytes:
    buf = io.BytesIO()
    rgb = image.convert("RGB")
    if image_format == "png":
        rgb.save(buf, format="PNG")
    elif image_format == "webp":
        rgb.save(buf, format="WEBP", lossless=True)
    else:
        rgb.save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o444, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _prepare_out(out: str | os.PathLike, split: str, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file, not a directory; give a directory for the dataset")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create directory {out} ({exc.strerror or exc}); give a directory you "
                        f"can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out: directory {out} is not writable; give a directory you can write to")
    if (out / split).exists() and not overwrite:
        raise UserError(f"--out: {out / split} already exists; pass --overwrite to replace that split, or choose "
                        f"another --out")
    return out


def _check_metadata(out: Path, split: str, classnames: list[str], templates: list[str]) -> None:
    """Another split already in ``out`` must describe the same classes (else labels would mean two things);
    with no other split there, the files are simply replaced."""
    others = [out / other for other in SPLITS if other != split and (out / other / NSHARDS_FILE).is_file()]
    if not others:
        return
    for name, want in ((CLASSNAMES_FILE, classnames), (TEMPLATES_FILE, templates)):
        path = out / name
        if path.is_file():
            have = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if have != want:
                raise UserError(f"{path}: lists other {'class names' if name == CLASSNAMES_FILE else 'templates'} "
                                f"than this export, and {others[0]} uses them; choose another --out for this "
                                f"dataset or remove {others[0]}")


def write_clip_benchmark(out: str | os.PathLike, samples: Iterable[tuple[str, bytes, int]], classnames: list[str],
                         templates: list[str], *, split: str = "test", maxcount: int = DEFAULT_MAXCOUNT,
                         overwrite: bool = False, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``(image extension, image bytes, label)`` samples as split ``split`` of a CLIP_benchmark WebDataset
    folder ``out`` (layout in the module docstring); ``templates`` use ``{}``. Returns a summary dict."""
    if split not in SPLITS:
        raise UserError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(maxcount, int) or maxcount < 1:
        raise UserError(f"--maxcount: must be an integer >= 1, got {maxcount!r}")
    classnames = _check_lines(list(classnames), "class names")
    cb_templates = _check_lines([to_clip_benchmark_template(t) for t in templates], "templates")
    out = _prepare_out(out, split, overwrite)
    _check_metadata(out, split, classnames, cb_templates)
    tmp = out / f".{split}.partial-{os.getpid()}"
    old = out / f".{split}.old.partial-{os.getpid()}"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    counts = [0] * len(classnames)
    n = shards = 0
    tar = None
    try:
        tmp.mkdir()
        for ext, data, label in samples:
            if not (isinstance(label, int) and 0 <= label < len(classnames)):
                raise UserError(f"label {label!r} of sample {n} is not in 0..{len(classnames) - 1}")
            if n % maxcount == 0:
                if tar is not None:
                    tar.close()
                    _fsync(tmp / f"{shards - 1}.tar")
                tar = tarfile.open(tmp / f"{shards}.tar", "w", format=tarfile.USTAR_FORMAT)
                shards += 1
            key = f"{n:06d}"
            _tar_add(tar, f"{key}.{ext}", data)
            _tar_add(tar, f"{key}.cls", str(label).encode())
            counts[label] += 1
            n += 1
        if tar is not None:
            tar.close()
            _fsync(tmp / f"{shards - 1}.tar")
            tar = None
        if n == 0:
            raise UserError("no samples to write (the source is empty)")
        atomic_write_text(tmp / NSHARDS_FILE, f"{shards}\n")
        fsync_dir(tmp)
        atomic_write_text(out / CLASSNAMES_FILE, "\n".join(classnames) + "\n")
        atomic_write_text(out / TEMPLATES_FILE, "\n".join(cb_templates) + "\n")
        replaced = (out / split).exists()
        if replaced:
            os.replace(out / split, old)
        try:
            os.replace(tmp, out / split)
        except BaseException:
            if replaced:
                os.replace(old, out / split)
            raise
        fsync_dir(out)
    finally:
        if tar is not None:
            tar.close()
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
    summary = {"out": str(out), "split": split, "samples": n, "shards": shards, "classes": len(classnames),
               "per_class": counts, "pattern": str(out / split / ("{0..%d}.tar" % (shards - 1)))}
    record = {}
    if (out / INFO_FILE).is_file():  # the other splits' records stay; this split's is replaced
        try:
            record = json.loads((out / INFO_FILE).read_text())
        except (OSError, ValueError):
            record = {}
    record[split] = {**(info or {}), **{k: v for k, v in summary.items() if k != "out"}}
    atomic_write_json(out / INFO_FILE, record)
    return summary


def export_world_family(family: str, out: str | os.PathLike, *, n_per_class: int = DEFAULT_N_PER_CLASS,
                        seed: int = DEFAULT_SEED, image_size: int, split: str = "test",
                        image_format: str = "png", maxcount: int = DEFAULT_MAXCOUNT,
                        overwrite: bool = False) -> dict[str, Any]:
    """A world task family's evaluation set (``datagen.world.build_eval_set(family, n_per_class, seed,
    image_size, split)``, class-major order) as a CLIP_benchmark dataset in ``out``.

    ``image_size`` has no default: give the model's input size. With it and the defaults, these are exactly the
    images synthloop's own validation (``CLIPPretrain``'s ``eval_per_class=40``, ``eval_seed=1234``, test split,
    rendered at the model's size) scores, with the same class names and templates."""
    from datagen.world import build_eval_set, get_task_family
    from datagen.world.render import check_size
    from datagen.world.scene import WorldConfigError

    fam = get_task_family(family, "--family")
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--image_format: must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    for key, value in (("--n_per_class", n_per_class), ("--image_size", image_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{key}: must be an integer >= 1, got {value!r}")
    if split not in SPLITS:
        raise UserError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        check_size(image_size)
    except WorldConfigError as exc:
        raise UserError(f"--image_size: {exc}") from None
    _check_metadata(_prepare_out(out, split, overwrite), split, list(fam.classnames),
                    [to_clip_benchmark_template(t) for t in fam.templates])  # refuse before rendering
    images, labels = build_eval_set(fam, n_per_class=n_per_class, seed=seed, image_size=image_size, split=split)

    def samples() -> Iterator[tuple[str, bytes, int]]:
        for image, label in zip(images, labels):
            yield image_format, _encode_image(image, image_format), int(label)

    info = {"source": "world", "family": fam.name, "n_per_class": n_per_class, "seed": seed,
            "image_size": image_size, "image_format": image_format}
    return write_clip_benchmark(out, samples(), list(fam.classnames), list(fam.templates), split=split,
                                maxcount=maxcount, overwrite=overwrite, info=info)


def export_image_folder(root: str | os.PathLike, dataset: str, out: str | os.PathLike, *, split: str = "test",
                        max_per_class: int | None = None, seed: int = 0, maxcount: int = DEFAULT_MAXCOUNT,
                        overwrite: bool = False) -> dict[str, Any]:
    """Split ``split`` of dataset ``dataset`` in the MTIL folder layout under ``root`` (``docs/mtil.md``) as a
    CLIP_benchmark dataset in ``out``: files copied byte for byte in their own format, sorted as
    ``datagen.gift.folders.index_split`` sorts them; ``max_per_class`` = the same per-class subset
    ``folder_eval_set(..., max_per_class, seed)`` evaluates."""
    from datagen.gift.folders import index_split, load_image, load_task_info, select_per_class

    if split not in FOLDER_SPLITS:
        raise UserError(f"--split: must be one of {', '.join(FOLDER_SPLITS)} for an image folder, got {split!r}")
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise UserError(f"--max_per_class: must be an integer >= 1, got {max_per_class!r}")
    if not Path(root).is_dir():
        raise UserError(f"--image_folder: {root} is not a directory (the MTIL layout root, docs/mtil.md)")
    try:
        classnames, templates = load_task_info(root, dataset)
        items = select_per_class(index_split(root, dataset, split, len(classnames)), max_per_class, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--image_folder/--dataset: {' '.join(str(exc).split())}") from None
    folder = Path(root) / dataset
    _check_metadata(_prepare_out(out, split, overwrite), split, list(classnames),
                    [to_clip_benchmark_template(t) for t in templates])

    def samples() -> Iterator[tuple[str, bytes, int]]:
        for rel, label in items:
            path = folder / rel
            try:
                load_image(path)  # a file CLIP_benchmark could not decode fails here, naming it
                data = path.read_bytes()
            except Exception as exc:  # noqa: BLE001 - any decode error: one line naming the file
                raise UserError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); fix or remove it") from None
            yield path.suffix.lower().lstrip("."), data, int(label)

    info = {"source": "image_folder", "root": str(root), "dataset": dataset, "max_per_class": max_per_class,
            "seed": seed}
    return write_clip_benchmark(out, samples(), classnames, templates, split=split, maxcount=maxcount,
                                overwrite=overwrite, info=info)


def format_summary(s: dict[str, Any], dataset_name: str) -> str:
    """A few lines: what was written and the CLIP_benchmark command that reads it."""
    return "\n".join([
        f"synthloop datagen: wrote {s['samples']} images of {s['classes']} classes in {s['shards']} shard(s): "
        f"{s['pattern']}",
        f"synthloop datagen: evaluate with: clip_benchmark eval --model local-dir:<run>/clip_final.open_clip "
        f"--pretrained '' --dataset wds/{dataset_name} --dataset_root {s['out']} --split {s['split']} "
        f"--task zeroshot_classification --no_amp --output result.json   (--no_amp: fp32, as synthloop's "
        f"validation scores)",
    ])
