"""Who a patient folder is of: the person the split keeps whole, the bootstrap resamples as one, and the champion's
re-scoring leaves out when it has seen them."""

from __future__ import annotations

import re

# BraTS 2023 and later name a scan BraTS-<cohort>-<subject>-<timepoint> (BraTS-GLI-00008-000, BraTS-GLI-00008-001):
# the timepoints of one subject are one person, so they go to one split together.
SUBJECT_TIMEPOINT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$")


def subject_of(patient: str) -> str:
    """The person a patient folder is of: its subject for a BraTS 2023-style name, else the folder itself."""
    match = SUBJECT_TIMEPOINT.match(patient)
    return match.group(1) if match else patient
