"""Source formats of the ``images`` dataset: each format its own spec, registered by name.

A source entry (``data.sources[i]``) names its ``format``; :data:`SOURCE_FORMATS` gives the spec
class that reads it, so each format takes exactly its own keys (a misspelled or foreign key fails
with that format's valid ones) and knows which tasks it labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.registry import Registry
from core.spec import from_dict

from .coco import load_coco
from .folders import load_csv, load_image_folder
from .records import ImageRecord


@dataclass
class ImageSource(ABC):
    """One dataset: a file or folder per split, in one format."""

    name: str
    format: str
    train: str
    val: str | None = None
    test: str | None = None

    def splits(self) -> dict[str, str]:
        """The file or folder of each split it gives (train always)."""
        given = {"train": self.train, "val": self.val, "test": self.test}
        return {split: path for split, path in given.items() if path}

    @abstractmethod
    def read(self, path: str) -> tuple[list[ImageRecord], list[str] | None]:
        """One split's records, and the detection categories where the format has them."""

    @abstractmethod
    def tasks(self) -> list[str]:
        """The tasks this source labels."""

    def detection_task(self) -> str | None:
        """The task its boxes label, if any."""
        return None

    def multilabel_tasks(self) -> list[str]:
        """Its image-level tasks with several names per image."""
        return []


SOURCE_FORMATS: Registry[ImageSource] = Registry("image source format")


@SOURCE_FORMATS.register("coco")
@dataclass
class CocoSource(ImageSource):
    """A COCO file per split: boxes (the ``detection`` task) and image-level ``labels``."""

    image_root: str | None = None  # folder the file names are relative to
    detection: str | None = None  # the task its boxes label
    labels: list[str] = field(default_factory=list)  # image-level classification tasks
    multilabel: list[str] = field(default_factory=list)  # those of ``labels`` with several names per image

    def read(self, path: str) -> tuple[list[ImageRecord], list[str] | None]:
        return load_coco(path, self.image_root, self.detection)

    def tasks(self) -> list[str]:
        return [*([self.detection] if self.detection else []), *self.labels]

    def detection_task(self) -> str | None:
        return self.detection

    def multilabel_tasks(self) -> list[str]:
        return list(self.multilabel)


@SOURCE_FORMATS.register("folder")
@dataclass
class FolderSource(ImageSource):
    """``<split folder>/<class name>/<image>``: one classification task named by the sub-folders."""

    task: str | None = None

    def read(self, path: str) -> tuple[list[ImageRecord], list[str] | None]:
        if not self.task:
            raise ConfigError(f"source '{self.name}': a folder source needs 'task' (the task its sub-folders name)")
        return load_image_folder(path, self.task), None

    def tasks(self) -> list[str]:
        return [self.task] if self.task else []


@SOURCE_FORMATS.register("csv")
@dataclass
class CsvSource(ImageSource):
    """A CSV per split: an image path column and a column per classification task."""

    image_root: str | None = None  # folder the file names are relative to (default: the CSV's)
    labels: list[str] = field(default_factory=list)  # classification tasks, one column each
    multilabel: list[str] = field(default_factory=list)  # those of ``labels`` with several names per image
    path_column: str = "image"

    def read(self, path: str) -> tuple[list[ImageRecord], list[str] | None]:
        return load_csv(path, self.labels, self.image_root, self.path_column, self.multilabel), None

    def tasks(self) -> list[str]:
        return list(self.labels)

    def multilabel_tasks(self) -> list[str]:
        return list(self.multilabel)


def parse_source(raw: Any, where: str) -> ImageSource:
    """A source entry as its format's spec."""
    if not isinstance(raw, Mapping) or "format" not in raw:
        raise ConfigError(f"'{where}' needs a 'format': one of {', '.join(SOURCE_FORMATS.names())}")
    if raw["format"] not in SOURCE_FORMATS:
        raise ConfigError(
            f"source '{raw.get('name', where)}': unknown format '{raw['format']}'; "
            f"valid: {', '.join(SOURCE_FORMATS.names())}"
        )
    return from_dict(SOURCE_FORMATS.get(raw["format"]), raw, where)
