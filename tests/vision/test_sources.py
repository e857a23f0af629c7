"""Image source formats: each its own spec, found by name in one registry."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from vision.data.sources import SOURCE_FORMATS, CocoSource, CsvSource, FolderSource, parse_source

ENTRIES = {
    "coco": {"detection": "boxes", "labels": ["scene", "tags"], "multilabel": ["tags"], "image_root": "img"},
    "folder": {"task": "species"},
    "csv": {"labels": ["scene", "tags"], "multilabel": ["tags"], "path_column": "file"},
}
TASKS = {"coco": ["boxes", "scene", "tags"], "folder": ["species"], "csv": ["scene", "tags"]}


def test_every_format_is_covered():
    assert sorted(SOURCE_FORMATS.names()) == sorted(ENTRIES)


@pytest.mark.parametrize("format", sorted(ENTRIES))
def test_a_source_reads_as_its_formats_spec_and_knows_its_tasks(format):
    source = parse_source({"name": "s", "format": format, "train": "t", **ENTRIES[format]}, "data.sources[0]")
    assert isinstance(source, SOURCE_FORMATS.get(format)) and source.tasks() == TASKS[format]
    assert source.detection_task() == ("boxes" if format == "coco" else None)
    assert source.multilabel_tasks() == ([] if format == "folder" else ["tags"])
    assert source.splits() == {"train": "t"}


@pytest.mark.parametrize(("format", "foreign"), [("folder", "labels"), ("coco", "task"), ("csv", "detection")])
def test_a_key_of_another_format_is_refused_with_the_formats_own_keys(format, foreign):
    with pytest.raises(ConfigError, match=f"unknown key 'data.sources\\[0\\].{foreign}'"):
        parse_source({"name": "s", "format": format, "train": "t", foreign: "x"}, "data.sources[0]")


def test_an_unknown_or_missing_format_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown format 'voc'; valid: coco, csv, folder"):
        parse_source({"name": "s", "format": "voc", "train": "t"}, "data.sources[0]")
    with pytest.raises(ConfigError, match="needs a 'format': one of coco, csv, folder"):
        parse_source({"name": "s", "train": "t"}, "data.sources[0]")


def test_a_folder_source_without_its_task_says_so():
    with pytest.raises(ConfigError, match="a folder source needs 'task'"):
        FolderSource("s", "folder", "t").read("t")
    assert CocoSource("s", "coco", "t").tasks() == [] and CsvSource("s", "csv", "t").tasks() == []
