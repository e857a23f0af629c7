"""jointtrain.nlp: one transformers encoder shared by sequence, pair and token (NER) heads.

Importing the package registers its components: the ``hf_encoder`` backbone, the ``sequence``
and ``token`` heads, the text task types, the ``text`` and ``nlp_demo`` datasets and the
``text`` predictor.
"""

from . import data, demo, encoder, generation, heads, predict, tasks
from .encoder import HFEncoder, load_tokenizer
from .metrics import EntityScore, bio_spans

__all__ = [
    "EntityScore",
    "HFEncoder",
    "bio_spans",
    "data",
    "demo",
    "encoder",
    "generation",
    "heads",
    "load_tokenizer",
    "predict",
    "tasks",
]
