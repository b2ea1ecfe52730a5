"""The FastAPI app: a versioned JSON API under /api/v1 and the web page at /.

Every error leaves as ``{"error": "one line"}`` with a 4xx status (5xx only for a server bug, whose
traceback goes to the server log, never to the client).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from etp_search.errors import EtpError
from etp_search.jsonsafe import to_jsonable
from etp_search.serve import API_PREFIX
from etp_search.serve import plots
from etp_search.serve.engine import Engine, NotAvailableError
from etp_search.serve.schemas import (ERRORS, MAX_K, MAX_LABEL_LEN, MAX_LABELS, MAX_WHERE, MAX_WHERE_LEN, Health,
                                      PromptSet, QueryInfo, RecordOut, RecordQuery, SearchResponse, Target,
                                      TextQuery, ZeroshotRecord, ZeroshotResponse)
from etp_search.serve.security import MAX_UPLOAD_BYTES, GuardMiddleware
from etp_search.serve.uploads import UploadedFile, parse_upload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Uploads up to this size are parsed on the event loop; larger ones in the worker pool.
INLINE_UPLOAD_BYTES = 256 * 1024


def _one_line(message: str) -> str:
    line = " ".join(str(message).split())
    return line[:500] if line else "bad request"


def _validation_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return _one_line("; ".join(parts) + " (see /docs for the request format)")


def _install_error_handlers(app: FastAPI) -> None:
    from indexing.errors import IndexingError, RecordNotFoundError

    def error(status: int, message: str) -> JSONResponse:
        # Name the store, not where it lives on the server's disk.
        store = getattr(app.state, "engine", None)
        if store is not None:
            message = str(message).replace(str(store.store_path), store.store_path.name)
        return JSONResponse({"error": _one_line(message)}, status_code=status)

    @app.exception_handler(RecordNotFoundError)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(NotAvailableError)
    async def _not_here(request: Request, exc: Exception) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(EtpError)
    @app.exception_handler(IndexingError)
    async def _user_error(request: Request, exc: Exception) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint {request.url.path}; see /docs for the API"
        return JSONResponse({"error": _one_line(message)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("error answering %s %s", request.method, request.url.path)
        return error(500, "internal server error; the server log has the details")


def _split_labels(labels: str) -> list[str]:
    items = [s.strip() for s in re.split(r"[,\n]", labels) if s.strip()]
    _check_labels(items)
    return items


def _check_labels(items: list[str]) -> None:
    if len(items) > MAX_LABELS:
        raise EtpError(f"{len(items)} labels given; at most {MAX_LABELS} per request")
    long = [s for s in items if len(s) > MAX_LABEL_LEN]
    if long:
        raise EtpError(f"label {long[0][:40]!r}... is over {MAX_LABEL_LEN} characters; shorten it")


def _check_where(where: list[str]) -> None:
    if len(where) > MAX_WHERE:
        raise EtpError(f"{len(where)} filters given; at most {MAX_WHERE}")
    if any(len(w) > MAX_WHERE_LEN for w in where):
        raise EtpError(f"a filter is over {MAX_WHERE_LEN} characters; shorten it")


def create_app(engine: Engine, *, token: str | None = None, max_upload: int = MAX_UPLOAD_BYTES,
               allowed_hosts: tuple[str, ...] | None = None, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The API and page over ``engine``.

    Args:
        engine: Model, store and indexes, loaded.
        token: Bearer token every /api call must carry (None: no token).
        max_upload: Largest request body in bytes.
        allowed_hosts: Host names the server answers to (None: any); see GuardMiddleware.
        cors_origins: Origins allowed to call the API from other pages (none by default).
    """
    from starlette.formparsers import MultiPartParser

    # Keep uploads in memory up to the request cap (Starlette spools parts over 1 MB to a temp
    # file otherwise); the cap bounds what one request can hold.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload)
    app = FastAPI(title="etp-search", version="1",
                  description="Search an ECG-text embedding store by text, by ECG file or by stored record; "
                              "zero-shot labels; ECG-paper plots. Errors are `{\"error\": \"one line\"}`.")
    app.state.engine = engine
    _install_error_handlers(app)
    deps = [Security(HTTPBearer(auto_error=False))] if token else []  # documents the token; the guard checks it
    api = APIRouter(prefix=API_PREFIX, responses=ERRORS, dependencies=deps)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(engine.submit(fn, *args))

    def response(kind: str, result: tuple, target: str, k: int, where: list[str], **q: Any) -> JSONResponse:
        hits, snap = result  # rows: the snapshot this search ran on, even if a newer one is live now
        # Returned as a ready JSONResponse: the response_model documents the shape, but re-validating
        # our own output through pydantic would cost more than the FAISS search (tests check the shape).
        return JSONResponse({"query": {"kind": kind, **q}, "target": target, "k": k, "where": where,
                             "rows": snap.n, "hits": to_jsonable([h.as_dict() for h in hits])})

    async def read_upload(files: list[UploadFile], fs: Optional[float], layout: Optional[str], units: str) -> Any:
        got = [UploadedFile(f.filename or "", await f.read()) for f in files]
        return await run(parse_upload, got, fs, layout, units)

    @api.get("/health", response_model=Health, summary="Liveness and the number of rows served")
    async def health() -> dict:
        return {"status": "ok", "rows": engine.snapshot.n}

    @api.get("/info", summary="Store, checkpoint, index kind and measured recall, limits, tasks")
    async def info() -> dict:
        from etp_search.labels import list_tasks

        out = await run(engine.info)
        out.update(limits={"max_k": MAX_K, "max_upload_bytes": max_upload, "max_labels": MAX_LABELS,
                           "max_where": MAX_WHERE}, tasks=list_tasks(), prompt_sets=["default", "ensemble"],
                   auth="bearer" if token else "none")
        return to_jsonable(out)

    @api.post("/search/text", response_model=SearchResponse, summary="Text -> nearest ECGs or reports")
    async def search_text(q: TextQuery) -> JSONResponse:
        _check_where(q.where)
        hits = await asyncio.wrap_future(engine.submit_text(q.text, q.k, q.target, q.where))
        return response("text", hits, q.target, q.k, q.where, text=q.text)

    @api.post("/search/record", response_model=SearchResponse, summary="Stored ECG -> nearest ECGs or reports")
    async def search_record(q: RecordQuery) -> JSONResponse:
        _check_where(q.where)
        hits = await asyncio.wrap_future(engine.submit_record(q.id, q.k, q.target, q.where))
        return response("record", hits, q.target, q.k, q.where, id=q.id)

    @api.post("/search/upload", response_model=SearchResponse,
              summary="Uploaded ECG file -> nearest ECGs or reports (preprocessed like `index`)")
    async def search_upload(
        file: Annotated[list[UploadFile], File(description="A .hea + .dat, a .hea + .mat, a CPSC2018 .mat, or a .npy")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        target: Annotated[Target, Form()] = "ecg",
        where: Annotated[list[str], Form(description="Filters, repeatable")] = [],  # noqa: B006 (FastAPI copies it)
        fs: Annotated[Optional[float], Form(description=".npy only: sampling rate in Hz")] = None,
        layout: Annotated[Optional[str], Form(description=".npy only: 'samples x leads' or 'leads x samples'")] = None,
        units: Annotated[str, Form(description=".npy only: mV, uV, V or sd (standardised)")] = "mV",
        thumbnail: Annotated[bool, Form(description="Also return the uploaded ECG downsampled for drawing")] = False,
    ) -> JSONResponse:
        _check_where(where)
        got = [UploadedFile(f.filename or "", await f.read()) for f in file]

        def work() -> tuple:  # one trip to the worker pool: parse, preprocess, queue the search, thumbnail
            rec = parse_upload(got, fs, layout, units)
            search = engine.submit_signal(engine.prepare_signal(rec.signal, rec.fs), k, target, where)
            thumb = plots.thumbnail(rec.signal, rec.fs) if thumbnail else None
            return rec, search, thumb

        # A small upload (a 10 s record is ~25 kB: ~1 ms to parse and preprocess) is handled on the event
        # loop: under load each thread hand-off waits for a core, which cost more than the parse itself.
        small = sum(len(f.data) for f in got) <= INLINE_UPLOAD_BYTES
        rec, search, thumb = work() if small else await run(work)
        result = await asyncio.wrap_future(search)
        return response("upload", result, target, k, where, file=rec.meta.get("source") or rec.id, fs=rec.fs,
                        seconds=rec.duration_s, thumbnail=thumb)

    @api.get("/records/{record_id:path}/signal", summary="A stored record's 12 leads, downsampled for drawing")
    async def record_signal(record_id: str, points: Annotated[int, Query(ge=10, le=2000)] = 400) -> dict:
        rec = await run(engine.record_signal, record_id)
        return await run(plots.thumbnail, rec.signal, rec.fs, points)

    @api.get("/records/{record_id:path}/plot.{fmt}", summary="A stored record on ECG paper (png or svg)",
             responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}})
    async def record_plot(record_id: str, fmt: str,
                          layout: Annotated[str, Query(pattern=r"^(3x4\+II|12x1)$")] = "3x4+II") -> Response:
        if fmt not in plots.FORMATS:
            raise EtpError(f"unknown plot format {fmt!r}; use plot.png or plot.svg")
        rec = await run(engine.record_signal, record_id)
        meta = await run(engine.record, record_id)
        labels = " ".join(sorted(meta["labels"], key=lambda c: -float(meta["labels"][c] or 0)))
        body = await run(plots.render, rec.signal, rec.fs, fmt, f"{record_id}  {labels}".strip(), layout)
        return Response(body, media_type=plots.FORMATS[fmt], headers={"cache-control": "private, max-age=3600"})

    @api.get("/records/{record_id:path}", response_model=RecordOut, summary="A stored record's metadata, labels and report")
    async def record(record_id: str) -> dict:
        return to_jsonable(await run(engine.record, record_id))

    @api.post("/zeroshot/record", response_model=ZeroshotResponse, summary="Zero-shot labels of a stored ECG")
    async def zeroshot_record(q: ZeroshotRecord) -> dict:
        if q.labels is not None:
            _check_labels(q.labels)
        vec, _ = await run(engine.record_vector, q.id)
        classes = await run(engine.zeroshot, vec, q.labels, q.task, q.prompts)
        return {"query": {"kind": "record", "id": q.id}, "task": q.task, "prompts": q.prompts if q.task else None,
                "classes": classes}

    @api.post("/zeroshot/upload", response_model=ZeroshotResponse, summary="Zero-shot labels of an uploaded ECG")
    async def zeroshot_upload(
        file: Annotated[list[UploadFile], File(description="A .hea + .dat, a .hea + .mat, a CPSC2018 .mat, or a .npy")],
        labels: Annotated[Optional[str], Form(description="Comma-separated free labels (or give task)")] = None,
        task: Annotated[Optional[str], Form(max_length=40)] = None,
        prompts: Annotated[PromptSet, Form()] = "default",
        fs: Annotated[Optional[float], Form()] = None,
        layout: Annotated[Optional[str], Form()] = None,
        units: Annotated[str, Form()] = "mV",
    ) -> dict:
        names = _split_labels(labels) if labels is not None else None
        rec = await read_upload(file, fs, layout, units)
        vec = await run(engine.encode_signal, rec.signal, rec.fs)
        classes = await run(engine.zeroshot, vec, names, task, prompts)
        return {"query": {"kind": "upload", "file": rec.meta.get("source") or rec.id, "fs": rec.fs,
                          "seconds": rec.duration_s}, "task": task, "prompts": prompts if task else None,
                "classes": classes}

    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    # Outermost: refuse unauthenticated or oversized requests before anything reads their body.
    app.add_middleware(GuardMiddleware, token=token, max_body=max_upload, allowed_hosts=allowed_hosts,
                       api_prefix=API_PREFIX + "/")
    return app


__all__ = ["create_app", "QueryInfo"]
