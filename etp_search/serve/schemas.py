"""Request and response models of the HTTP API; FastAPI turns them into the OpenAPI page at /docs."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from etp_search.search import MAX_QUERY_CHARS, Target

#: Bounds on what one request may ask for.
MAX_K = 100
MAX_TEXT = MAX_QUERY_CHARS
MAX_WHERE = 8
MAX_WHERE_LEN = 200
MAX_LABELS = 50
MAX_LABEL_LEN = 200

PromptSet = Literal["default", "ensemble"]
WhereList = list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class TextQuery(_Strict):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="Report-like text, e.g. 'atrial fibrillation'.")
    k: int = Field(10, ge=1, le=MAX_K, description="Number of results.")
    target: Target = Field("ecg", description="'ecg': nearest ECGs; 'report': nearest reports.")
    where: WhereList = Field(default_factory=list, max_length=MAX_WHERE,
                             description="Filters as in the CLI's --where: strat_fold=10, age>=60, label=AFIB.")


class RecordQuery(_Strict):
    id: str = Field(min_length=1, max_length=200, description="Id of an ECG in the store.")
    k: int = Field(10, ge=1, le=MAX_K)
    target: Target = "ecg"
    where: WhereList = Field(default_factory=list, max_length=MAX_WHERE)


class ZeroshotRecord(_Strict):
    id: str = Field(min_length=1, max_length=200, description="Id of an ECG in the store.")
    labels: Optional[list[str]] = Field(None, min_length=1, max_length=MAX_LABELS,
                                        description="Free labels, each its own prompt (give labels or task).")
    task: Optional[str] = Field(None, max_length=40, description="A task: superdiagnostic, rhythm, form, ...")
    prompts: PromptSet = Field("default", description="Prompt set of a task: 'default' or 'ensemble'.")


class HitOut(BaseModel):
    rank: int
    id: str
    score: float
    labels: dict[str, Any]
    report: str
    row: int
    age: Optional[float] = None
    sex: Optional[int] = None
    strat_fold: Optional[int] = None
    source: Optional[str] = None


class QueryInfo(BaseModel):
    kind: Literal["text", "record", "upload"]
    text: Optional[str] = None
    id: Optional[str] = None
    file: Optional[str] = None
    fs: Optional[float] = None
    seconds: Optional[float] = None
    thumbnail: Optional[dict[str, Any]] = Field(None, description="The uploaded ECG, downsampled for drawing.")


class SearchResponse(BaseModel):
    query: QueryInfo
    target: Target
    k: int
    where: list[str]
    rows: int = Field(description="Store rows the search ran over (grows while `index` appends).")
    hits: list[HitOut]


class ClassScore(BaseModel):
    label: str
    description: str
    score: float = Field(description="Cosine similarity of the ECG to the class's prompt embedding.")
    probability: float = Field(description="Softmax over the classes at the model's logit scale.")
    n_prompts: int


class ZeroshotResponse(BaseModel):
    query: QueryInfo
    task: Optional[str] = None
    prompts: Optional[str] = None
    classes: list[ClassScore]


class RecordOut(BaseModel):
    id: str
    row: int
    report: str
    labels: dict[str, Any]
    meta: dict[str, Any]


class ErrorOut(BaseModel):
    error: str = Field(description="One line that says what was wrong and how to fix it.")


class Health(BaseModel):
    status: Literal["ok"]
    rows: int


# Typed as FastAPI's ``responses=`` parameter (status code -> OpenAPI response description).
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 404, 413, 422)}
