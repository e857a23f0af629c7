"""The bundled demo data, one source per task: sentiment, subjectivity and Twitter NER (the default),
and the text-to-text tasks of ``nlp.gen_corpora`` (entity extraction, number verbalisation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.data import DATASETS, DataBundle
from core.errors import ConfigError

from . import gen_corpora
from .corpora import manifest, prepare
from .data import SPLITS, text_data
from .encoder import MINILM

DEMO_TASKS = ("sentiment", "subjectivity", "ner")
GENERATION_TASKS = ("extract", *(f"num_{lang}" for lang in gen_corpora.LANGUAGES))


@DATASETS.register("nlp_demo")
def nlp_demo(
    tasks: Sequence[str] = DEMO_TASKS,
    tokenizer: str = MINILM,
    max_length: int = 64,
    max_train_samples: int = 0,
    cache: str | None = None,
    max_target_length: int = 48,
) -> DataBundle:
    """The prepared corpora (``nlp.corpora``, ``nlp.gen_corpora``) as one source per task; ``tasks``
    picks a subset (default: the three classification / tagging tasks)."""
    unknown = [t for t in tasks if t not in (*DEMO_TASKS, *GENERATION_TASKS)]
    if unknown or not tasks:
        valid = ", ".join((*DEMO_TASKS, *GENERATION_TASKS))
        raise ConfigError(f"unknown nlp_demo tasks {unknown}; valid: {valid}")
    root = prepare(cache) if set(tasks) & set(DEMO_TASKS) else None
    names = manifest(root)["label_names"] if root is not None else {}
    generated = gen_corpora.prepare(cache) if set(tasks) & set(GENERATION_TASKS) else None
    sources: dict[str, dict[str, Any]] = {}
    for task in tasks:
        folder = generated if task in GENERATION_TASKS else root
        assert folder is not None
        files = {split: str(folder / task / f"{split}.jsonl") for split in SPLITS}
        source: dict[str, Any] = {"path": "json", "data_files": files, "id": "id"}
        if task in GENERATION_TASKS:
            source.update(text="text", labels={task: {"column": "target", "kind": "generation"}})
        elif task == "ner":
            source.update(tokens="tokens", labels={task: {"column": "tags", "kind": "token", "names": names[task]}})
        else:
            source.update(text="text", labels={task: {"column": "label", "names": names[task]}})
        sources[task] = source
    return text_data(
        sources, tokenizer, max_length, max_train_samples=max_train_samples, max_target_length=max_target_length
    )
