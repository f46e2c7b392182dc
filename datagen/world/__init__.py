"""A procedural 2-D "scene world": scene graphs, rendering, captions, QA, edits and task families.

Typical use::

    rng = np.random.default_rng(0)
    scene = sample_scene(rng, (2, 6))
    image = render_scene(scene, 64, rng)
    text = dense_caption(scene)

and, for the online stream, the generators ``WorldCaptions``, ``WorldQA``, ``WorldPairs`` and
``TaskSamples``. Everything is deterministic given the ``np.random.Generator`` passed in.
"""

from .edits import EDIT_KINDS, edit_scene, make_pair
from .generators import TaskSamples, WorldCaptions, WorldPairs, WorldQA
from .language import (NUMBER_WORDS, QA, QTYPES, count_phrase, dense_caption, depth_relation, horizontal_relation,
                       number_word, object_phrase, qa_pairs, referring_attrs, relation_phrase, seed_caption)
from .render import COLOR_RGB, render_scene
from .scene import (ATTRIBUTES, COLORS, MATERIALS, RELATION_MARGIN, SHAPES, SIZES, Scene, SceneObject,
                    WorldConfigError, check_n_objects, object_radius, sample_scene)
from .tasks import (TASK_FAMILIES, TaskFamily, build_eval_set, digits_data, get_task_family, scene_classname)

__all__ = [
    "ATTRIBUTES", "COLORS", "COLOR_RGB", "EDIT_KINDS", "MATERIALS", "NUMBER_WORDS", "QA", "QTYPES",
    "RELATION_MARGIN", "SHAPES", "SIZES", "Scene", "SceneObject", "TASK_FAMILIES", "TaskFamily", "TaskSamples",
    "WorldCaptions", "WorldConfigError", "WorldPairs", "WorldQA", "build_eval_set", "check_n_objects",
    "count_phrase", "dense_caption", "depth_relation",
    "digits_data", "edit_scene", "get_task_family", "horizontal_relation", "make_pair", "number_word",
    "object_phrase", "object_radius", "qa_pairs", "referring_attrs", "relation_phrase", "render_scene",
    "sample_scene", "scene_classname", "seed_caption",
]
