"""Who a patient folder is of: the person the split keeps whole, the bootstrap resamples as one, and the champion's
re-scoring leaves out when it has seen them."""

from __future__ import annotations

import re

import pandas as pd

# BraTS 2023 and later name a scan BraTS-<cohort>-<subject>-<timepoint> (BraTS-GLI-00008-000, BraTS-GLI-00008-001):
# the timepoints of one subject are one person, so they go to one split together.
SUBJECT_TIMEPOINT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$")


def subject_of(patient: str) -> str:
    """The person a patient folder is of: its subject for a BraTS 2023-style name, else the folder itself."""
    match = SUBJECT_TIMEPOINT.match(patient)
    return match.group(1) if match else patient


def subjects(patients: pd.Series) -> pd.Series:
    """Each row's person (`subject_of`): what a bootstrap resamples, so that one subject's timepoints are drawn
    together and are not counted as independent patients."""
    return patients.astype(str).map(subject_of)
