"""The 14 CheXpert findings and the policies that turn report labels into training targets.

Order is that of MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-chexpert.csv`` (alphabetical), which every
array of 14 values in the project follows.  Values: 1 positive, 0 negative, -1 uncertain,
NaN not mentioned (blank in the CSV).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
NUM_FINDINGS = len(FINDINGS)
FINDING_INDEX = {name: i for i, name in enumerate(FINDINGS)}
# The five findings of the CheXpert competition, reported separately in the literature.
COMPETITION_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
COMPETITION_INDICES = tuple(FINDING_INDEX[f] for f in COMPETITION_FINDINGS)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
VALID_LABEL_VALUES = (POSITIVE, NEGATIVE, UNCERTAIN)

LabelPolicy = Literal["ignore", "ones", "zeros"]


def parse_label(value: object) -> float:
    """One CSV cell -> 1.0 / 0.0 / -1.0 / NaN. Raises ValueError on anything else."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() == "nan":
            return math.nan
        value = float(text)
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return math.nan
    if number not in VALID_LABEL_VALUES:
        raise ValueError(f"label {value!r} is not one of 1, 0, -1 or blank")
    return number


def apply_policy(
    labels: Sequence[float] | np.ndarray,
    uncertain: LabelPolicy = "ignore",
    blank: Literal["zeros", "ignore"] = "zeros",
) -> tuple[np.ndarray, np.ndarray]:
    """Report labels -> (targets, mask) as float32 arrays of the same shape.

    ``uncertain``: "ones" (U-Ones), "zeros" (U-Zeros) or "ignore" (masked out of the loss).
    ``blank`` (not mentioned): "zeros" is the usual reading (not mentioned = absent);
    "ignore" masks it.
    """
    y = np.asarray(labels, dtype=np.float32)
    targets = np.where(y == POSITIVE, 1.0, 0.0).astype(np.float32)
    mask = np.ones_like(targets)
    unc = y == UNCERTAIN
    if uncertain == "ones":
        targets[unc] = 1.0
    elif uncertain == "ignore":
        mask[unc] = 0.0
    elif uncertain != "zeros":
        raise ValueError(f"unknown uncertain-label policy {uncertain!r}")
    blanks = np.isnan(y)
    if blank == "ignore":
        mask[blanks] = 0.0
    elif blank != "zeros":
        raise ValueError(f"unknown blank-label policy {blank!r}")
    return targets, mask
