"""Image-pair sources for Vision-Zero games: civilians see ``original``, the spy sees ``modified``.

Every source implements ``pair(rng) -> {"original": PIL, "modified": PIL, "edit": dict, "source": str,
"meta": dict}`` deterministically from the ``np.random.Generator`` (``meta`` is JSON-able extra detail).

Spec (``docs/specs/visionzero.md``, "Image pairs"): CLEVR-like scenes whose spy copy replaces two
objects' shape and/or colour in place (:class:`WorldPairs`; ``blank_spy=True`` is the revised paper's
blank spy image), charts with two values swapped (:class:`ChartPairs`), and edited photos supplied as
files (:class:`FolderPairs`).

Not to be confused with :class:`datagen.world.WorldPairs`, a stream generator of edit pairs for other
recipes; this one is a pair *source* that :class:`datagen.visionzero.setups.GameSetups` draws from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re

import numpy as np
from PIL import Image

from datagen.world import EDIT_KINDS, make_pair
from datagen.world.render import check_size
from datagen.world.scene import Scene, sample_scene

SPY_EDIT_KINDS = ("replace_shape", "replace_color", "replace_shape_color")  # in place: positions unchanged
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Scene splits (WorldPairs(split=...)): a scene's split is a function of the scene itself, so the splits
# are disjoint by construction, whatever seeds the streams use. Fractions of the scene space:
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}  # the rest (0.8) is "train"


def scene_key(scene: Scene | dict) -> str:
    """SHA-256 of a scene's canonical JSON (every object's attributes and exact float position).

    Two scenes have the same key exactly when they are the same scene (``repr`` of a float round-trips).
    """
    d = scene.to_dict() if isinstance(scene, Scene) else scene
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def scene_split(scene: Scene | dict) -> str:
    """``"val"``, ``"test"`` or ``"train"``: the split the scene belongs to (by :func:`scene_key`).

    The key's first 64 bits as a fraction u in [0, 1): u < 0.1 -> val, 0.1 <= u < 0.2 -> test, else train.
    """
    u = int(scene_key(scene)[:16], 16) / 2.0**64
    lo = 0.0
    for name in ("val", "test"):
        if u < lo + SPLIT_FRACTIONS[name]:
            return name
        lo += SPLIT_FRACTIONS[name]
    return "train"


class PairSource:
    """Interface: ``pair(rng)`` returns one (original, modified) pair with a description of the edit."""

    def pair(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError


class WorldPairs(PairSource):
    """Scene-world minimal pairs: ``k`` objects get a new shape and/or colour at the same position.

    The edit kind is drawn uniformly from ``kinds`` per pair (paper: k = 2, shape and/or colour).
    Both renders share the background jitter, so the edit is the only visible difference.
    ``blank_spy=True`` gives the spy the empty background instead (easiest difficulty; ``kinds`` and
    ``k`` are then unused and the edit is ``{"kind": "blank", ...}``).

    ``split`` (``"train"``, ``"val"``, ``"test"``; None = no filter, the original draw) keeps only pairs
    whose ORIGINAL scene belongs to that split (:func:`scene_split`): each attempt draws a seed from
    ``rng``, samples the scene from it, and renders the pair from the same seed once the scene's split
    matches. The splits are disjoint by construction (a scene has one split), so no validation game
    shares its civilians' scene (hence its setup) with a training or test game, whatever the stream
    seeds. ``meta["split"]`` records it.
    """

    def __init__(self, size: int = 64, n_objects: int | tuple[int, int] = (4, 6),
                 kinds: tuple[str, ...] = SPY_EDIT_KINDS, k: int = 2, blank_spy: bool = False,
                 split: str | None = None) -> None:
        bad = [x for x in kinds if x not in SPY_EDIT_KINDS]
        if bad or not kinds:
            # add/remove move the layout and would make the pair trivially different; they stay out.
            raise ValueError(f"unsupported edit kinds {bad or kinds}; valid: {SPY_EDIT_KINDS} (see EDIT_KINDS "
                             f"{EDIT_KINDS} for the world's full list)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.size, self.n_objects = check_size(size), n_objects
        self.kinds, self.k, self.blank_spy = tuple(kinds), int(k), bool(blank_spy)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.split = split

    def _make(self, rng: np.random.Generator) -> dict:
        kind = "blank" if self.blank_spy else self.kinds[int(rng.integers(len(self.kinds)))]
        return make_pair(rng, self.n_objects, kind=kind, k=self.k, size=self.size)

    def pair(self, rng: np.random.Generator, max_tries: int = 10_000) -> dict:
        if self.split is None:
            p = self._make(rng)
        else:
            for _ in range(max_tries):
                seed = int(rng.integers(2**63))
                sub = np.random.default_rng(seed)
                if not self.blank_spy:
                    sub.integers(len(self.kinds))  # the kind draw _make does first
                if scene_split(sample_scene(sub, self.n_objects)) == self.split:
                    p = self._make(np.random.default_rng(seed))
                    break
            else:
                raise RuntimeError(f"no {self.split} scene in {max_tries} draws")
            assert scene_split(p["original"]) == self.split
        meta = {"original_scene": p["original"].to_dict(), "modified_scene": p["modified"].to_dict()}
        if self.split is not None:
            meta["split"] = self.split
        return {"original": p["image_original"], "modified": p["image_modified"], "edit": p["edit"],
                "source": "world", "meta": meta}


class FolderPairs(PairSource):
    """Pairs from files ``{name}_original.{ext}`` / ``{name}_modified.{ext}`` in ``root`` (one level).

    Image files that do not pair up (a missing partner, two extensions for one side, or a name without
    either suffix) raise ValueError naming them; non-image files are ignored. An optional sidecar
    ``{name}_edit.json`` becomes the pair's ``edit`` dict (default ``{"kind": "folder", "name": name}``).
    ``pair(rng)`` draws a name uniformly; ``size`` resizes both images (None keeps them).
    """

    _PATTERN = re.compile(r"^(?P<name>.+)_(?P<side>original|modified)$")

    def __init__(self, root: str, size: int | None = None) -> None:
        self.root, self.size = str(root), size
        if not os.path.isdir(self.root):
            raise ValueError(f"FolderPairs: {self.root!r} is not a directory")
        sides: dict[str, dict[str, list[str]]] = {}
        stray = []
        for fname in sorted(os.listdir(self.root)):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in IMAGE_EXTS:
                continue
            m = self._PATTERN.match(stem)
            if m is None:
                stray.append(fname)
                continue
            sides.setdefault(m["name"], {"original": [], "modified": []})[m["side"]].append(fname)
        problems = [f"{f} (name ends neither in _original nor in _modified)" for f in stray]
        for name, d in sides.items():
            for side, files in d.items():
                other = "modified" if side == "original" else "original"
                if len(files) > 1:
                    problems.append(f"{', '.join(files)} (several {side} images for {name!r})")
                elif files and not d[other]:
                    problems.append(f"{files[0]} (no {name}_{other}.* partner)")
        if problems:
            raise ValueError(f"FolderPairs({self.root!r}): unmatched image files: " + "; ".join(problems))
        if not sides:
            raise ValueError(f"FolderPairs({self.root!r}): no {{name}}_original.* / {{name}}_modified.* pairs found")
        self.names = sorted(sides)
        self._files = {n: (sides[n]["original"][0], sides[n]["modified"][0]) for n in self.names}

    def __len__(self) -> int:
        return len(self.names)

    def _load(self, fname: str) -> Image.Image:
        with Image.open(os.path.join(self.root, fname)) as im:
            im = im.convert("RGB")
        if self.size is not None:
            im = im.resize((self.size, self.size), Image.BICUBIC)
        return im

    def pair(self, rng: np.random.Generator) -> dict:
        name = self.names[int(rng.integers(len(self.names)))]
        orig_f, mod_f = self._files[name]
        edit = {"kind": "folder", "name": name}
        sidecar = os.path.join(self.root, f"{name}_edit.json")
        if os.path.exists(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                edit = json.load(f)
        return {"original": self._load(orig_f), "modified": self._load(mod_f), "edit": edit, "source": "folder",
                "meta": {"name": name, "files": [orig_f, mod_f]}}


# Two label groups (months for "Sales", letters for "Counts"); at most three characters, so six
# tick labels stay apart at 128 px.
CHART_LABEL_GROUPS = (("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
                      ("A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M"))
CHART_TITLES = ("Sales", "Counts")
CHART_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


class ChartPairs(PairSource):
    """Bar charts of 4–6 labelled integer values; the spy copy swaps two of them (spec: "Charts").

    ``swap="values"`` exchanges two bars' values (their labels stay); ``swap="labels"`` exchanges two
    labels (heights stay). Values are distinct, so either swap changes the picture. Rendered with
    matplotlib's Agg canvas on a private Figure (no pyplot global state, safe in DataLoader workers)
    straight to an in-memory PNG; same rng -> same values -> same pixels.
    """

    def __init__(self, size: int = 128, n_values: tuple[int, int] = (4, 6), max_value: int = 20,
                 swap: str = "values", dpi: int = 100) -> None:
        if swap not in ("values", "labels"):
            raise ValueError(f"swap must be 'values' or 'labels', got {swap!r}")
        lo, hi = n_values
        if not 2 <= lo <= hi <= min(map(len, CHART_LABEL_GROUPS)) or max_value < hi:
            raise ValueError(f"bad n_values={n_values} / max_value={max_value}")
        self.size, self.n_values, self.max_value = int(size), (int(lo), int(hi)), int(max_value)
        self.swap, self.dpi = swap, int(dpi)

    def _render(self, labels: list[str], values: list[int], color: str, title: str) -> Image.Image:
        # Imported here: matplotlib costs ~0.3 s to import and only chart games need it.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        inch = self.size / self.dpi
        fig = Figure(figsize=(inch, inch), dpi=self.dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.14, 0.14, 0.82, 0.74))
        fs = max(4.0, self.size / 28)  # font size in points that stays legible from 64 to 512 px
        bars = ax.bar(range(len(values)), values, color=color)
        ax.bar_label(bars, labels=[str(v) for v in values], fontsize=fs, padding=1)
        ax.set_xticks(range(len(values)), labels, fontsize=fs)
        ax.tick_params(axis="y", labelsize=fs)
        ax.set_ylim(0, self.max_value * 1.15)
        ax.set_title(title, fontsize=fs * 1.1)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        buf.seek(0)
        with Image.open(buf) as im:
            im = im.convert("RGB")
        if im.size != (self.size, self.size):  # inch * dpi can round one pixel off
            im = im.resize((self.size, self.size), Image.BICUBIC)
        return im

    def pair(self, rng: np.random.Generator) -> dict:
        n = int(rng.integers(self.n_values[0], self.n_values[1] + 1))
        g = int(rng.integers(len(CHART_LABEL_GROUPS)))
        group = CHART_LABEL_GROUPS[g]
        labels = [group[i] for i in sorted(rng.choice(len(group), size=n, replace=False).tolist())]
        values = [int(v) + 1 for v in rng.choice(self.max_value, size=n, replace=False)]
        color = CHART_COLORS[int(rng.integers(len(CHART_COLORS)))]
        i, j = sorted(int(x) for x in rng.choice(n, size=2, replace=False))
        mod_labels, mod_values = list(labels), list(values)
        if self.swap == "values":
            mod_values[i], mod_values[j] = values[j], values[i]
            changes = [{"index": a, "field": "value", "label": labels[a], "from": values[a], "to": values[b]}
                       for a, b in ((i, j), (j, i))]
        else:
            mod_labels[i], mod_labels[j] = labels[j], labels[i]
            changes = [{"index": a, "field": "label", "value": values[a], "from": labels[a], "to": labels[b]}
                       for a, b in ((i, j), (j, i))]
        title = CHART_TITLES[g]
        return {"original": self._render(labels, values, color, title),
                "modified": self._render(mod_labels, mod_values, color, title),
                "edit": {"kind": f"swap_{self.swap}", "changes": changes}, "source": "chart",
                "meta": {"labels": labels, "values": values, "modified_labels": mod_labels,
                         "modified_values": mod_values, "color": color, "title": title}}
