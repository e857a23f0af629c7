"""How a table becomes training data: the preparation options every table-based dataset shares.

``table``, ``records`` and ``thyroid`` take these as keys of their ``data`` section (read with
:func:`read_preparation`, so a misspelled key fails with the close name) and hand them on as one
:class:`TablePreparation` to :func:`~core.tabular.dataset.prepare_table`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.spec import from_dict

#: the share of rows (of ids) held out for validation and for test when no split column is given
DEFAULT_FRACTION = 0.15


@dataclass(frozen=True)
class TablePreparation:
    """Which columns feed the model, how rows split, how features are encoded."""

    features: list[str] | None = None  # default: every column that is not a label, id, split or reserved one
    categorical: list[str] = field(default_factory=list)  # force a column's kind (default: numeric when it parses)
    numeric: list[str] = field(default_factory=list)
    coerce: list[str] = field(default_factory=list)  # numeric columns whose stray words are read as missing
    id_column: str | None = None  # rows sharing an id stay in one split; predictions echo it
    split_column: str | None = None  # a column of train / val / test instead of the seeded fractions
    val_fraction: float | None = None  # of the rows (of the ids); default DEFAULT_FRACTION
    test_fraction: float | None = None
    seed: int = 0
    min_category_count: int = 5  # rarer training categories go to the unknown bucket
    numeric_bins: int = 16  # quantile bins per numeric column (piecewise-linear encoding; 0 = none)

    def __post_init__(self) -> None:
        if self.split_column is not None and (self.val_fraction, self.test_fraction) != (None, None):
            raise ConfigError("give split_column or val_fraction / test_fraction, not both")
        for key in ("val_fraction", "test_fraction"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, DEFAULT_FRACTION)


def read_preparation(options: Mapping[str, Any], where: str = "data") -> TablePreparation:
    """The preparation options of a ``data`` section."""
    return from_dict(TablePreparation, options, where)
