"""Who a patient folder is of: the person the split keeps whole, the bootstrap resamples as one, and the champion's
re-scoring leaves out when it has seen them."""

from __future__ import annotations

import re

import pandas as pd

# BraTS 2023 and later name a scan BraTS-<cohort>-<subject>-<timepoint> (BraTS-GLI-00008-000, BraTS-GLI-00008-001):
# the timepoints of one subject are one person, so they go to one split together. A cohort may have a part of its
# own (BraTS 2024's BraTS-MEN-RT-0001-1), and a folder may come lower-cased (brats-gli-00008-002): each was a subject
# of its own, so one person's timepoints could land in train and test.
SUBJECT_TIMEPOINT = re.compile(r"^brats-([a-z]+(?:-[a-z]+)*)-(\d+)-\d+$", re.IGNORECASE)


def subject_of(patient: str) -> str:
    """The person a patient folder is of: its subject for a BraTS 2023-style name (BraTS-<COHORT>-<number>, however
    the folder is cased), else the folder itself."""
    match = SUBJECT_TIMEPOINT.match(patient)
    return f"BraTS-{match.group(1).upper()}-{match.group(2)}" if match else patient


def subjects(patients: pd.Series) -> pd.Series:
    """Each row's person (`subject_of`): what a bootstrap resamples, so that one subject's timepoints are drawn
    together and are not counted as independent patients."""
    return patients.astype(str).map(subject_of)
