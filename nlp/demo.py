"""The bundled demo data: sentiment, subjectivity and Twitter NER, one source per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.data import DATASETS, DataBundle
from core.errors import ConfigError

from .corpora import manifest, prepare
from .data import SPLITS, text_data
from .encoder import MINILM

DEMO_TASKS = ("sentiment", "subjectivity", "ner")


@DATASETS.register("nlp_demo")
def nlp_demo(
    tasks: Sequence[str] = DEMO_TASKS,
    tokenizer: str = MINILM,
    max_length: int = 64,
    max_train_samples: int = 0,
    cache: str | None = None,
) -> DataBundle:
    """The prepared corpora (see ``nlp.corpora``) as one source per task; ``tasks`` picks a subset."""
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown nlp_demo tasks {unknown}; valid: {', '.join(DEMO_TASKS)}")
    root = prepare(cache)
    names = manifest(root)["label_names"]
    sources: dict[str, dict[str, Any]] = {}
    for task in tasks:
        files = {split: str(root / task / f"{split}.jsonl") for split in SPLITS}
        source: dict[str, Any] = {"path": "json", "data_files": files, "id": "id"}
        if task == "ner":
            source.update(tokens="tokens", labels={task: {"column": "tags", "kind": "token", "names": names[task]}})
        else:
            source.update(text="text", labels={task: {"column": "label", "names": names[task]}})
        sources[task] = source
    return text_data(sources, tokenizer, max_length, max_train_samples=max_train_samples)
