"""The one record type every reader yields, and the standard 12-lead order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Standard 12-lead order used everywhere in the toolkit.
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)


@dataclass
class EcgRecord:
    """One ECG with its report and labels.

    Attributes:
        id: Dataset-unique record id (PTB-XL ecg_id as a string, CPSC "A0001", a WFDB record path).
        signal: (12, L) float32 in millivolts, rows in ``STANDARD_LEADS`` order; missing leads are 0.
        fs: Sampling rate in Hz.
        text: The report text chosen by the reader's text source ("" when there is none).
        labels: Dataset-native label codes -> likelihood/weight (PTB-XL scp_codes, CPSC class names,
            SNOMED names for CinC headers). Tasks in ``etp_search.labels`` map these to multi-hot vectors.
        meta: Free metadata: age, sex, strat_fold, source file, missing_leads, texts per source, ...
    """

    id: str
    signal: np.ndarray
    fs: float
    text: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    leads: tuple[str, ...] = STANDARD_LEADS

    @property
    def duration_s(self) -> float:
        return self.signal.shape[-1] / float(self.fs)
