"""Sample <-> tar member encoding of the WebDataset shards (:mod:`datagen.shards`).

Field <-> tar member mapping (the same in both directions, so a round trip restores field names)::

    "image"   PIL image      -> <key>.jpg | <key>.png        (open_clip's main image)
    "<f>"     PIL image      -> <key>.<f>.jpg | <key>.<f>.png
    "txt"     str            -> <key>.txt                    (open_clip's caption)
    "<f>"     str            -> <key>.<f>.txt
    "json"    dict/list      -> <key>.json
    "<f>"     dict/list/float/bool/None -> <key>.<f>.json
    "label"   int            -> <key>.cls
    "<f>"     int            -> <key>.<f>.cls
    "<f>"     numpy array    -> <key>.<f>.npy
    "<f>"     bytes          -> <key>.<f>                    (stored as is, read back as bytes)

Keys (``__key__``) must not contain ``.``: WebDataset splits member names at the first dot.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # annotations only: the codec itself needs neither torch nor webdataset
    from datagen.stream import Sample

MANIFEST_NAME = "manifest.json"
# open_clip's get_dataset_size() reads this file next to the shards, so --train-num-samples becomes optional.
SIZES_NAME = "sizes.json"
MAIN_IMAGE_FIELD = "image"
MAIN_LABEL_FIELD = "label"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------
def _encode_image(img: Image.Image, fmt: str, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        # JPEG has no alpha / palette: convert instead of letting PIL raise deep inside an export.
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


def encode_sample(
    sample: Sample, image_format: str = "jpg", jpeg_quality: int = 95, aux_image_format: str | None = None
) -> dict[str, Any]:
    """Encode one sample into ``{"__key__": str, extension: bytes, ...}`` (see the module docstring).

    Keys starting with ``_`` other than ``__key__`` (bookkeeping, ``__url__``) are dropped. Raises
    ``TypeError`` for a value type with no mapping and ``ValueError`` for a field name with ``.`` or ``/``.
    """
    aux_image_format = aux_image_format or image_format
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for name, value in sample.items():
        if name.startswith("_"):
            continue
        if "." in name or "/" in name:
            raise ValueError(f"field name {name!r} may not contain '.' or '/' (it becomes a tar member extension)")
        if isinstance(value, Image.Image):
            if name == MAIN_IMAGE_FIELD:
                ext, data = image_format, _encode_image(value, image_format, jpeg_quality)
            else:
                ext, data = f"{name}.{aux_image_format}", _encode_image(value, aux_image_format, jpeg_quality)
        elif isinstance(value, str):
            ext, data = ("txt" if name == "txt" else f"{name}.txt"), value.encode("utf-8")
        elif isinstance(value, (bool, np.bool_)):  # before int: bool is an int subclass but is not a class label
            ext, data = f"{name}.json", _json_bytes(bool(value))
        elif isinstance(value, (int, np.integer)):
            ext, data = ("cls" if name == MAIN_LABEL_FIELD else f"{name}.cls"), str(int(value)).encode("ascii")
        elif isinstance(value, (dict, list, tuple, float, type(None))):
            ext, data = ("json" if name == "json" else f"{name}.json"), _json_bytes(value)
        elif isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            ext, data = f"{name}.npy", buf.getvalue()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            ext, data = name, bytes(value)
        else:
            raise TypeError(
                f"field {name!r} of sample {sample['__key__']!r}: no shard encoding for {type(value).__name__}"
            )
        if ext in out:
            raise ValueError(f"sample {sample['__key__']!r}: two fields map to the same member extension {ext!r}")
        out[ext] = data
    return out


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------
def _decode_image(data: bytes, rgb: bool) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # force the full decode here so a truncated image fails now, not later in a worker's transform
    return img.convert("RGB") if rgb and img.mode != "RGB" else img


def decode_members(key: str, url: str, members: dict[str, bytes]) -> Sample:
    """Decode one sample's tar members (extension -> bytes) into fields; inverse of :func:`encode_sample`."""
    sample: Sample = {"__key__": key, "__url__": url}
    for ext, data in members.items():
        last = ext.rsplit(".", 1)[-1]
        name = ext.rsplit(".", 1)[0] if "." in ext else None  # None: a bare extension (jpg, txt, json, cls)
        if last in IMAGE_EXTS:
            # main image -> RGB (what open_clip and most transforms expect); aux images keep their mode (masks)
            sample[name or MAIN_IMAGE_FIELD] = _decode_image(data, rgb=name is None)
        elif last == "txt":
            sample[name or "txt"] = data.decode("utf-8")
        elif last == "json":
            sample[name or "json"] = json.loads(data.decode("utf-8"))
        elif last == "cls":
            sample[name or MAIN_LABEL_FIELD] = int(data.decode("ascii").strip())
        elif last == "npy":
            sample[name or "npy"] = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            sample[ext] = data
    return sample
