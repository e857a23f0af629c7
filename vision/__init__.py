"""jointtrain vision: one timm backbone shared by image classification and object detection.

Importing this package registers the ``timm`` backbone, the ``pooled`` head, the ``detection``
task type, COCO mAP metrics, the ``images`` / ``digit_scenes`` datasets and the ``image`` predictor.
"""

from . import backbone, data, metrics, predict, tasks
from .backbone import TimmBackbone
from .heads import FCOSHead, PooledHead
from .tasks import DetectionTask

__all__ = ["DetectionTask", "FCOSHead", "PooledHead", "TimmBackbone", "backbone", "data", "metrics", "predict", "tasks"]
