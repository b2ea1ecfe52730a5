"""Index layout by rows and a memory budget: which FAISS index, its parameters, its RAM.

``plan_index`` picks a layout from the row count and a byte budget (``auto``: Flat below ~200k
rows, IVF-Flat up to a few million, IVF-PQ with an SQ8 refine step beyond, or whenever the budget
no longer holds the full float vectors); ``default_nlist`` sizes the IVF lists of every "auto";
``estimate_memory`` is the arithmetic behind it and ``parse_bytes`` reads ``--max-index-memory``.
Numbers only: nothing here touches FAISS or a file (``indexing.build`` builds the plan).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

Kind = Literal["flat", "ivf_flat", "ivf_pq_refine"]
KINDS: tuple[Kind, ...] = ("flat", "ivf_flat", "ivf_pq_refine")

#: Row counts at which ``auto`` moves to the next layout when the budget allows the cheaper one
#: (DESIGN.md: flat search of 1M x 256 takes ~100 ms on this class of machine; at 200k ~20 ms).
FLAT_MAX_ROWS = 200_000
IVF_FLAT_MAX_ROWS = 3_000_000
#: Rows per training example per IVF list, and the cap on the training sample.
TRAIN_PER_LIST = 64
TRAIN_MAX = 262_144
#: PQ with 8-bit codes trains 256 centroids per sub-quantizer: FAISS wants ~39 rows per centroid.
PQ_MIN_ROWS = 39 * 256


class PlanError(IndexingError, ValueError):
    """A plan that cannot be met (budget too small, unknown layout, data of another shape)."""


@dataclass(frozen=True)
class IndexPlan:
    """The chosen layout, its parameters and the bytes it is expected to hold in RAM."""

    kind: Kind
    n: int
    dim: int
    nlist: int
    pq_m: int
    ondisk: bool
    memory_bytes: int
    reason: str

    @property
    def factory(self) -> str:
        """The equivalent ``faiss.index_factory`` string (for the sidecar and for humans)."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf_flat":
            return f"IVF{self.nlist},Flat"
        return f"IVF{self.nlist},PQ{self.pq_m},Refine(SQ8)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factory": self.factory}


def default_nlist(n: int) -> int:
    """IVF lists of every "auto" layout: about 4 sqrt(n) (FAISS guidelines: 4-16 sqrt(n)), a power
    of two in [16, 4096], never fewer than 39 rows per list."""
    if n < 16 * 39:
        return max(1, n // 39)
    target = min(4096, max(16, 4 * math.sqrt(n)))
    nlist = 1 << int(round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: dim/8 (8 dimensions each, 8 bits), a divisor of dim, at least 1."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def estimate_memory(kind: Kind, n: int, dim: int, nlist: int = 0, pq_m: int = 0, ondisk: bool = False) -> int:
    """Bytes the index keeps in RAM: vectors or codes, ids, centroids (inverted lists not if on disk)."""
    if kind == "flat":
        return n * dim * 4
    centroids = nlist * dim * 4
    if kind == "ivf_flat":
        lists = n * (dim * 4 + 8)
        return centroids + (0 if ondisk else lists)
    if kind == "ivf_pq_refine":
        lists = n * (pq_m + 8)
        refine = n * dim  # SQ8: one byte per dimension
        pq_tables = dim * 256 * 4
        return centroids + pq_tables + refine + (0 if ondisk else lists)
    raise PlanError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")


def plan_index(n: int, dim: int, factory: str = "auto", max_memory: int | None = None,
               ondisk: bool = False, nlist: int | None = None, pq_m: int | None = None,
               flat_max_rows: int = FLAT_MAX_ROWS) -> IndexPlan:
    """Choose a layout for ``n`` rows of ``dim`` floats under ``max_memory`` bytes (None: no limit).

    ``factory`` is ``auto`` or one of ``KINDS``. ``auto`` takes the first of Flat (n <
    ``flat_max_rows``), IVF-Flat (n <= 3M), IVF-PQ+refine whose estimated RAM fits the budget; a
    named kind that does not fit raises ``PlanError`` with the figure, as does a budget nothing fits.
    """
    if n <= 0 or dim <= 0:
        raise PlanError(f"cannot plan an index for {n} rows of dimension {dim}; add rows first")
    if factory != "auto" and factory not in KINDS:
        raise PlanError(f"unknown index factory {factory!r}; choose auto, {', '.join(KINDS)}")
    nl = nlist or default_nlist(n)
    m = pq_m or default_pq_m(dim)
    if dim % m:
        raise PlanError(f"PQ sub-quantizers {m} must divide the dimension {dim}")

    def make(kind: Kind, reason: str) -> IndexPlan:
        use_nlist = 0 if kind == "flat" else nl
        return IndexPlan(kind, n, dim, use_nlist, m if kind == "ivf_pq_refine" else 0,
                         ondisk and kind != "flat",
                         estimate_memory(kind, n, dim, use_nlist, m, ondisk and kind != "flat"), reason)

    def fits(p: IndexPlan) -> bool:
        return max_memory is None or p.memory_bytes <= max_memory

    if factory != "auto":
        plan = make(factory, "named")  # type: ignore[arg-type]
        if plan.kind == "ivf_pq_refine" and n < PQ_MIN_ROWS:
            raise PlanError(f"IVF-PQ needs at least {PQ_MIN_ROWS} rows to train (have {n}); use Flat or IVF-Flat")
        if not fits(plan):
            raise PlanError(
                f"a {plan.factory} index of {n} rows needs ~{_mb(plan.memory_bytes)} in RAM, over the "
                f"budget of {_mb(max_memory or 0)}; raise --max-index-memory or use --factory auto"
            )
        return plan
    candidates: list[tuple[Kind, bool, str]] = [
        ("flat", n < flat_max_rows, f"{n} rows < {flat_max_rows}: exact search"),
        ("ivf_flat", n <= IVF_FLAT_MAX_ROWS, f"{n} rows <= {IVF_FLAT_MAX_ROWS}: IVF over full vectors"),
        ("ivf_pq_refine", True, "PQ codes with an SQ8 refine step"),
    ]
    for kind, by_rows, why in candidates:
        plan = make(kind, why)
        if by_rows and fits(plan):
            return plan
        if not by_rows:
            continue
        logger.info("%s of %d rows needs %s, over the budget %s", plan.factory, n, _mb(plan.memory_bytes), _mb(max_memory or 0))
    # Row count allowed a cheaper layout but the budget did not: fall through to PQ if it fits.
    plan = make("ivf_pq_refine", "budget")
    if fits(plan) and n >= PQ_MIN_ROWS:
        return plan
    hint = "raise --max-index-memory" + ("" if ondisk else " or keep the inverted lists on disk")
    if n < PQ_MIN_ROWS:
        raise PlanError(f"{n} rows x {dim} need ~{_mb(make('flat', '').memory_bytes)} as exact vectors, over "
                       f"{_mb(max_memory or 0)}, and PQ codes need {PQ_MIN_ROWS} rows to train; raise --max-index-memory")
    raise PlanError(
        f"no index of {n} rows x {dim} fits {_mb(max_memory or 0)} (IVF-PQ+refine needs ~{_mb(plan.memory_bytes)}); {hint}"
    )


def _mb(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(s[-1:], 1)
    num = s[:-1] if s[-1:] in "KMGT" and s[-1:] else s
    try:
        value = float(num)
    except ValueError:
        raise PlanError(f"cannot read {text!r} as a memory size; write e.g. 4G, 512M or 1073741824") from None
    if value <= 0:
        raise PlanError(f"memory size {text!r} must be positive; write e.g. 4G or 512M")
    return int(value * mult)
