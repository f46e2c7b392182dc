"""WebDataset shard export and import.

Export (:func:`write_shards`, :func:`export_stream`) turns samples into ``{prefix}-%06d.tar`` shards in the
layout open_clip's trainer reads (``<key>.jpg`` + ``<key>.txt``); import (:class:`ShardStream`) reads them
back through the same deterministic, resumable slot machinery as the online generator streams
(:mod:`datagen.stream`), so a run can switch between online data and frozen shards without changes on the
training side.

* :mod:`.codec` -- sample <-> tar member encoding (the field <-> extension table is in its docstring);
* :mod:`.writer` -- atomic, resumable :func:`write_shards`, :func:`export_stream`, ``manifest.json``;
* :mod:`.reader` -- :class:`ShardStream`, damaged-shard handling, :func:`expand_urls`;
* :mod:`.export` -- :func:`export_generator`: any generator to shards, resumed by re-running, a changed
  generator or seed refused (``synthloop datagen world``).

Keys (``__key__``) must not contain ``.``: WebDataset splits member names at the first dot.
"""

from .codec import (IMAGE_EXTS, MAIN_IMAGE_FIELD, MAIN_LABEL_FIELD, MANIFEST_NAME, SIZES_NAME, decode_members,
                    encode_sample)
from .export import RUN_FILE, export_generator
from .reader import CorruptShardError, ShardStream, expand_urls, manifest_digests
from .writer import ShardSetInfo, export_stream, read_manifest, write_shards

__all__ = [
    "IMAGE_EXTS", "MAIN_IMAGE_FIELD", "MAIN_LABEL_FIELD", "MANIFEST_NAME", "RUN_FILE", "SIZES_NAME",
    "CorruptShardError", "ShardSetInfo", "ShardStream", "decode_members", "encode_sample", "expand_urls",
    "export_generator", "export_stream", "manifest_digests", "read_manifest", "write_shards",
]
