"""Vision data: COCO detection files, image folders / CSVs, and the digit-scenes demo."""

from .bundle import images
from .coco import load_coco, write_coco
from .digit_scenes import digit_scenes
from .folders import load_csv, load_image_folder
from .images import read_image
from .records import ClassSpec, ImageDataset, ImageRecord, collate
from .sources import SOURCE_FORMATS, ImageSource
from .transforms import Augment, build_transform

__all__ = [
    "SOURCE_FORMATS",
    "Augment",
    "ClassSpec",
    "ImageDataset",
    "ImageRecord",
    "ImageSource",
    "build_transform",
    "collate",
    "digit_scenes",
    "images",
    "load_coco",
    "load_csv",
    "load_image_folder",
    "read_image",
    "write_coco",
]
