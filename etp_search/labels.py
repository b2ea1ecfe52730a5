"""Classification tasks: PTB-XL's benchmark label sets and CPSC2018's 9 classes.

The PTB-XL tasks follow Strodthoff et al. 2020 (github.com/helme/ecg_ptbxl_benchmarking,
``utils.compute_label_aggregations`` and ``select_data`` with ``min_samples=0``):

- every key of ``scp_codes`` counts, whatever its likelihood (0 included);
- "all": the 71 statements; "diagnostic": statements with diagnostic == 1 (44);
  "subdiagnostic": their ``diagnostic_subclass`` (23); "superdiagnostic": their
  ``diagnostic_class`` (5); "form": statements with form == 1 (19); "rhythm": rhythm == 1 (12);
- classes are sorted as scikit-learn's MultiLabelBinarizer sorts them;
- a record with no label in a task drops out of that task (``Task.has_labels``);
- folds 1-8 train, 9 validation, 10 test (``split_of``).

With ``min_samples=0`` the benchmark keeps every class present in the full 21,837-record table,
and each statement occurs there at least once, so the class lists equal the statement groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from etp_search.errors import EtpError
from etp_search.text import load_scp_statements

PTBXL_TASKS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")

#: CPSC2018 classes in the order of their numbers 1..9 in REFERENCE.csv.
CPSC2018_CLASSES = ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
CPSC2018_DESCRIPTIONS = {
    "NORM": "normal sinus rhythm",
    "AF": "atrial fibrillation",
    "I-AVB": "first degree AV block",
    "LBBB": "left bundle branch block",
    "RBBB": "right bundle branch block",
    "PAC": "premature atrial contraction",
    "PVC": "premature ventricular contraction",
    "STD": "ST-segment depression",
    "STE": "ST-segment elevation",
}
# CinC 2020/2021 SNOMED abbreviations that mean a CPSC class, so records read from #Dx headers
# (without REFERENCE.csv) get the same task vector. CRBBB/RBBB, CLBBB/LBBB, SVPB/PAC and VPB/PVC
# are the challenge's equivalence pairs; VEB (164884008) is what CinC used for CPSC's PVC class.
CPSC2018_ALIASES = {
    "NSR": "NORM", "SNR": "NORM", "IAVB": "I-AVB", "CRBBB": "RBBB", "CLBBB": "LBBB",
    "SVPB": "PAC", "VPB": "PVC", "VEB": "PVC",
    # PTB-XL's SCP codes for the same classes, so `--task cpsc2018` reads a PTB-XL store too (its
    # PAC, PVC and NORM are spelled alike; CRBBB/CLBBB are above). Without these, AF, I-AVB, STD and
    # STE had no positives on PTB-XL and were dropped from the macro AUC as "no positives".
    "AFIB": "AF", "1AVB": "I-AVB", "STD_": "STD", "STE_": "STE",
}

# Descriptions of diagnostic subclasses/superclasses that are not themselves SCP codes.
_CLASS_DESCRIPTIONS = {
    "NORM": "normal ECG",
    "MI": "myocardial infarction",
    "STTC": "ST/T change",
    "CD": "conduction disturbance",
    "HYP": "hypertrophy",
    "ISCA": "ischemic in anterior leads",
    "ISCI": "ischemic in inferior leads",
    "_AVB": "atrioventricular block",
    "LAFB/LPFB": "left anterior or left posterior fascicular block",
    "AMI": "anterior myocardial infarction",
    "IMI": "inferior myocardial infarction",
    "LMI": "lateral myocardial infarction",
    "PMI": "posterior myocardial infarction",
}


@dataclass(frozen=True)
class Task:
    """A multi-label task: which dataset label codes make which class.

    Attributes:
        name: Task name (see ``list_tasks``).
        classes: Class names, in vector order.
        description: Class -> English description (for prompts and tables).
        mapping: Dataset label code -> classes it sets.
    """

    name: str
    classes: list[str]
    description: dict[str, str]
    mapping: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def vector(self, labels: Mapping[str, float]) -> np.ndarray:
        """Multi-hot (C,) float32 from one record's label dict; likelihoods are ignored."""
        out = np.zeros(len(self.classes), dtype=np.float32)
        index = self._index
        for code in labels:
            for cls in self.mapping.get(code, ()):
                out[index[cls]] = 1.0
        return out

    def matrix(self, labels: Sequence[Mapping[str, float]]) -> np.ndarray:
        """(N, C) float32 multi-hot matrix."""
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for i, lab in enumerate(labels):
            out[i] = self.vector(lab)
        return out

    def has_labels(self, labels: Mapping[str, float]) -> bool:
        """True when the record has at least one class of this task (others drop out of it)."""
        return any(self.mapping.get(code) for code in labels)

    def __len__(self) -> int:
        return len(self.classes)


def split_of(fold: int) -> str:
    """PTB-XL benchmark split of a strat_fold: 1-8 "train", 9 "val", 10 "test", else "unknown"."""
    fold = int(fold)
    if 1 <= fold <= 8:
        return "train"
    if fold == 9:
        return "val"
    if fold == 10:
        return "test"
    return "unknown"


def list_tasks() -> list[str]:
    """Names accepted by ``get_task``."""
    return [*PTBXL_TASKS, "cpsc2018"]


def _ptbxl_task(name: str) -> Task:
    st = load_scp_statements()
    desc = {code: str(d) for code, d in st["description"].items()}
    mapping: dict[str, tuple[str, ...]] = {}
    if name == "all":
        mapping = {code: (code,) for code in st.index}
    elif name in ("form", "rhythm"):
        mapping = {code: (code,) for code in st.index[st[name] == 1.0]}
    else:
        diag = st[st["diagnostic"] == 1.0]
        column = {"diagnostic": None, "subdiagnostic": "diagnostic_subclass",
                  "superdiagnostic": "diagnostic_class"}[name]
        for code, row in diag.iterrows():
            cls = code if column is None else row[column]
            if isinstance(cls, str) and cls:  # Strodthoff skips nan classes
                mapping[code] = (cls,)
    classes = sorted({c for v in mapping.values() for c in v})
    description = {c: desc.get(c) or _CLASS_DESCRIPTIONS.get(c, c) for c in classes}
    # A superclass shares its name with an SCP code only for NORM, whose description fits both.
    if name == "superdiagnostic":
        description = {c: _CLASS_DESCRIPTIONS[c] for c in classes}
    return Task(name=name, classes=classes, description=description, mapping=mapping)


def _cpsc_task() -> Task:
    mapping: dict[str, tuple[str, ...]] = {c: (c,) for c in CPSC2018_CLASSES}
    mapping.update({alias: (cls,) for alias, cls in CPSC2018_ALIASES.items()})
    return Task(name="cpsc2018", classes=list(CPSC2018_CLASSES), description=dict(CPSC2018_DESCRIPTIONS),
                mapping=mapping)


@functools.lru_cache(maxsize=None)
def get_task(name: str) -> Task:
    """Build a task by name.

    Raises:
        EtpError: for an unknown name, listing the known ones.
    """
    if name in PTBXL_TASKS:
        return _ptbxl_task(name)
    if name == "cpsc2018":
        return _cpsc_task()
    raise EtpError(f"unknown task '{name}'; known tasks: {', '.join(list_tasks())}")


def task_labels(task: Task, labels: Iterable[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) multi-hot matrix and (N,) bool mask of records that belong to the task."""
    labels = list(labels)
    y = task.matrix(labels)
    return y, np.asarray(y.any(axis=1))  # an ndarray (numpy's stubs say bool | ndarray for any(axis=...))


def record_statements(labels: Mapping[str, float], hierarchy: bool = False) -> list[str]:
    """A PTB-XL record's statements as short English texts: the phrases its ``scp_en`` report joins.

    Args:
        labels: SCP code -> likelihood of one record.
        hierarchy: Also add the English names of the diagnostic subclass and class of each certain
            (not "possible") diagnostic statement, e.g. "inferior myocardial infarction" and
            "myocardial infarction" for IMI, so class-level prompts have a training target.

    Returns:
        Distinct texts, report order first, then the hierarchy names; [] when no code is known.
    """
    from etp_search.text import POSSIBLE_BELOW, scp_phrases

    out = [text for _, text in scp_phrases(labels)]
    if hierarchy:
        st = load_scp_statements()
        desc = st["description"]
        for code, likelihood in labels.items():
            lk = float(likelihood) if likelihood == likelihood else 0.0
            if code not in st.index or st.at[code, "diagnostic"] != 1.0 or 0.0 < lk < POSSIBLE_BELOW:
                continue
            for column in ("diagnostic_subclass", "diagnostic_class"):
                name = st.at[code, column]
                if not isinstance(name, str) or not name:
                    continue
                text = _CLASS_DESCRIPTIONS.get(name) if column == "diagnostic_class" else (
                    str(desc[name]) if name in desc.index else _CLASS_DESCRIPTIONS.get(name))
                if text:
                    out.append(text)
    return list(dict.fromkeys(out))
