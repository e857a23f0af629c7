"""Generic tabular data: preprocessing fitted on the training split, the ``tabular`` backbone
(residual MLP / FT-Transformer encoders), the ``table`` dataset and the ``table`` predictor, and
the generated ``near_linear`` dataset.

pandas is imported only where a table is read (``core`` imports with torch alone).
"""

from . import backbone, dataset, encoders, predict, synthetic
from .dataset import PreparedTable, TableDataset, prepare_table, table_bundle
from .preparation import TablePreparation
from .read import read_table
from .schema import TabularSchema

__all__ = [
    "PreparedTable",
    "TableDataset",
    "TablePreparation",
    "TabularSchema",
    "backbone",
    "dataset",
    "encoders",
    "predict",
    "prepare_table",
    "read_table",
    "synthetic",
    "table_bundle",
]
