"""The HTTP API through FastAPI's TestClient, against a real store of the 50 shipped PTB-XL records.

Every endpoint is compared with the in-process ``Searcher`` (same ids, same scores), and every bad
input must come back as one JSON line with a 4xx code.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from etp_search.search import Searcher  # noqa: E402
from etp_search.serve.app import create_app  # noqa: E402
from etp_search.serve.engine import Engine  # noqa: E402
from etp_search.serve.schemas import SearchResponse  # noqa: E402

API = "/api/v1"
REC_DIR = Path(__file__).resolve().parents[1] / "etp_search" / "examples" / "ptbxl" / "records100" / "00000"


@pytest.fixture(scope="module")
def engine(example_store: Path):
    eng = Engine(example_store, refresh_s=0, workers=2)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine: Engine) -> TestClient:
    return TestClient(create_app(engine))


@pytest.fixture(scope="module")
def searcher(example_store: Path):
    with Searcher.open(example_store) as s:
        yield s


def wfdb_files(stem: str = "00009_lr") -> list:
    return [("file", (f"{stem}.hea", (REC_DIR / f"{stem}.hea").read_bytes())),
            ("file", (f"{stem}.dat", (REC_DIR / f"{stem}.dat").read_bytes()))]


def assert_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"] and body["error"]
    return body["error"]


def same_hits(http_hits: list[dict], hits) -> None:
    assert [h["id"] for h in http_hits] == [h.id for h in hits]
    np.testing.assert_allclose([h["score"] for h in http_hits], [h.score for h in hits], atol=1e-5)


# ---------------------------------------------------------------- endpoints, against the in-process Searcher

def test_health_and_info(client: TestClient, searcher: Searcher) -> None:
    assert client.get(f"{API}/health").json() == {"status": "ok", "rows": 50}
    info = client.get(f"{API}/info").json()
    assert info["rows"] == 50 and info["checkpoint"]["sha256"] == searcher.store.provenance["checkpoint_sha256"]
    assert info["indexes"]["ecg"]["factory"] == "Flat" and info["indexes"]["ecg"]["n_rows"] == 50
    assert info["indexes"]["ecg"]["recall_at_10"] == 1.0 and "text" in info["indexes"]
    assert info["limits"]["max_k"] == 100 and "superdiagnostic" in info["tasks"] and info["auth"] == "none"


def test_text_search_equals_searcher(client: TestClient, searcher: Searcher) -> None:
    r = client.post(f"{API}/search/text", json={"text": "atrial fibrillation", "k": 5})
    assert r.status_code == 200
    body = r.json()
    SearchResponse.model_validate(body)  # what /docs promises is what is sent
    same_hits(body["hits"], searcher.query_text("atrial fibrillation", k=5))
    assert body["rows"] == 50 and body["query"]["text"] == "atrial fibrillation"
    reports = client.post(f"{API}/search/text", json={"text": "sinus rhythm", "k": 3, "target": "report",
                                                      "where": ["strat_fold=10"]}).json()
    same_hits(reports["hits"], searcher.query_text("sinus rhythm", k=3, target="report", where=["strat_fold=10"]))
    assert all(h["strat_fold"] == 10 for h in reports["hits"])


def test_k_larger_than_store_returns_every_row(client: TestClient) -> None:
    hits = client.post(f"{API}/search/text", json={"text": "normal ECG", "k": 100}).json()["hits"]
    assert len(hits) == 50 and len({h["id"] for h in hits}) == 50


def test_record_search_equals_searcher(client: TestClient, searcher: Searcher) -> None:
    body = client.post(f"{API}/search/record", json={"id": "17", "k": 4}).json()
    same_hits(body["hits"], searcher.query_record("17", k=4))
    assert "17" not in [h["id"] for h in body["hits"]]  # ECG -> ECG leaves the query out
    reports = client.post(f"{API}/search/record", json={"id": "17", "k": 3, "target": "report"}).json()
    same_hits(reports["hits"], searcher.query_record("17", k=3, target="report"))


def test_upload_of_a_stored_record_finds_itself(client: TestClient, searcher: Searcher) -> None:
    """Preprocessed exactly like `index`: the uploaded copy of record 9 lands on its own stored vector."""
    body = client.post(f"{API}/search/upload", files=wfdb_files(), data={"k": "5", "thumbnail": "true"}).json()
    SearchResponse.model_validate(body)
    assert body["hits"][0]["id"] == "9" and body["hits"][0]["score"] > 0.9999
    same_hits(body["hits"], searcher.query_file(REC_DIR / "00009_lr.hea", k=5))
    q = body["query"]
    assert q["kind"] == "upload" and q["fs"] == 100.0 and q["seconds"] == 10.0
    thumb = q["thumbnail"]
    assert len(thumb["data"]) == 12 and 300 <= thumb["points"] <= 400 and len(thumb["data"][0]) == thumb["points"]


def test_upload_numpy_in_both_layouts_equals_wfdb(client: TestClient, searcher: Searcher) -> None:
    rec = searcher.store  # noqa: F841  (the store is open; the record itself comes from the reader)
    from etp_search.search import read_ecg_file

    sig = read_ecg_file(REC_DIR / "00009_lr.hea").signal
    want = client.post(f"{API}/search/upload", files=wfdb_files(), data={"k": "5"}).json()["hits"]
    for layout, arr in (("leads x samples", sig), ("samples x leads", sig.T), ("samples-leads", sig.T)):
        buf = io.BytesIO()
        np.save(buf, arr)
        got = client.post(f"{API}/search/upload", files=[("file", ("x.npy", buf.getvalue()))],
                          data={"k": "5", "fs": "100", "layout": layout}).json()["hits"]
        assert [h["id"] for h in got] == [h["id"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
    buf = io.BytesIO()
    np.save(buf, sig * 1000.0)  # the same ECG in microvolts, declared as such
    got = client.post(f"{API}/search/upload", files=[("file", ("x.npy", buf.getvalue()))],
                      data={"k": "5", "fs": "100", "layout": "leads-samples", "units": "uV"}).json()["hits"]
    assert [h["id"] for h in got] == [h["id"] for h in want]


def test_record_metadata(client: TestClient, searcher: Searcher) -> None:
    body = client.get(f"{API}/records/17").json()
    hit = searcher.hits(np.array([searcher.store.row_of("17")]), np.array([1.0]))[0]
    assert body["id"] == "17" and body["report"] == hit.text and body["labels"] == hit.labels
    assert body["meta"]["strat_fold"] == hit.meta["strat_fold"] and body["meta"]["dataset"] == "ptbxl"


def test_record_signal_thumbnail_keeps_peaks(client: TestClient) -> None:
    from etp_search.search import read_ecg_file

    raw = read_ecg_file(REC_DIR / "00009_lr.hea").signal
    body = client.get(f"{API}/records/9/signal", params={"points": 200}).json()
    data = np.array(body["data"])
    assert data.shape == (12, 200) and body["leads"][0] == "I" and body["fs"] == 100.0
    # each point is its bin's largest-magnitude sample, so every lead's peak survives downsampling
    np.testing.assert_allclose(np.abs(data).max(axis=1), np.abs(raw).max(axis=1), atol=1e-3)
    assert all(len(repr(v)) <= 7 for v in data.ravel().tolist()[:200])  # 3 decimals, not float32 noise


def test_plot_png_and_svg(client: TestClient) -> None:
    from etp_search.plotting import panel_geometry

    png = client.get(f"{API}/records/17/plot.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png.content[16:24])
    w_mm, h_mm = panel_geometry(1000, 100.0).page_mm  # true millimetre scale at 100 dpi
    assert abs(width - w_mm / 25.4 * 100) <= 1 and abs(height - h_mm / 25.4 * 100) <= 1
    svg = client.get(f"{API}/records/17/plot.svg", params={"layout": "12x1"})
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content[:2000]


def test_zeroshot_record_and_upload(client: TestClient, engine: Engine, searcher: Searcher) -> None:
    from etp_search.evaluation.zeroshot import encode_prompts, scores

    labels = ["atrial fibrillation", "sinus rhythm", "left bundle branch block"]
    body = client.post(f"{API}/zeroshot/record", json={"id": "17", "labels": labels}).json()
    got = {c["label"]: c["score"] for c in body["classes"]}
    vec = searcher.store.ecg(np.array([searcher.store.row_of("17")]))
    want = scores(vec, encode_prompts(engine.model, {lab: [lab] for lab in labels}))[0]
    np.testing.assert_allclose([got[lab] for lab in labels], want, atol=1e-5)
    assert [c["score"] for c in body["classes"]] == sorted(got.values(), reverse=True)
    assert abs(sum(c["probability"] for c in body["classes"]) - 1) < 1e-5
    task = client.post(f"{API}/zeroshot/record", json={"id": "17", "task": "superdiagnostic", "prompts": "ensemble"}).json()
    assert {c["label"] for c in task["classes"]} == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert all(c["n_prompts"] > 1 for c in task["classes"])
    up = client.post(f"{API}/zeroshot/upload", files=wfdb_files(), data={"labels": ",".join(labels)}).json()
    rec9 = client.post(f"{API}/zeroshot/record", json={"id": "9", "labels": labels}).json()
    assert [c["label"] for c in up["classes"]] == [c["label"] for c in rec9["classes"]]
    np.testing.assert_allclose([c["score"] for c in up["classes"]], [c["score"] for c in rec9["classes"]], atol=1e-4)


def test_one_thread_per_query_and_a_bounded_pool(engine: Engine) -> None:
    import faiss
    import torch

    assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert engine.pool._max_workers == 2


def test_concurrent_queries_equal_sequential_ones(engine: Engine) -> None:
    """Eight threads at once (text, record, signal) give exactly the answers of one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from etp_search.search import read_ecg_file

    sig = read_ecg_file(REC_DIR / "00009_lr.hea")
    jobs = [lambda: engine.query_text("atrial fibrillation", 5), lambda: engine.query_record("17", 5),
            lambda: engine.query_signal(sig.signal, sig.fs, 5), lambda: engine.query_text("sinus rhythm", 5, "report")]
    want = [[(h.id, round(h.score, 5)) for h in job()] for job in jobs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: [(h.id, round(h.score, 5)) for h in jobs[i % 4]()], range(32)))
    assert got == [want[i % 4] for i in range(32)]


def test_page_static_and_openapi(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "static/app.js" in page.text
    assert "http" not in page.text.split("<body>")[0].replace('href="data:,"', "")  # nothing fetched off-site
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/health", "/info", "/search/text", "/search/record", "/search/upload", "/records/{record_id}",
              "/records/{record_id}/plot.{fmt}", "/records/{record_id}/signal", "/zeroshot/record", "/zeroshot/upload"):
        assert API + p in paths, p


# ---------------------------------------------------------------- bad inputs: one JSON line, 4xx

@pytest.mark.parametrize("path,kind", [("/records/nope", "get"), ("/records/nope/plot.png", "get"),
                                       ("/records/nope/signal", "get"), ("/search/record", "post"),
                                       ("/zeroshot/record", "post")])
def test_unknown_id_is_404(client: TestClient, path: str, kind: str) -> None:
    if kind == "get":
        r = client.get(API + path)
    else:
        r = client.post(API + path, json={"id": "nope", **({"labels": ["a"]} if "zeroshot" in path else {})})
    msg = assert_error(r, 404)
    assert "'nope' is not in store store.h5" in msg and "/tmp" not in msg  # names the store, not its folder


@pytest.mark.parametrize("body,status", [({"text": ""}, 422), ({"text": "   "}, 400), ({"text": "x", "k": 0}, 422),
                                         ({"text": "x", "k": 101}, 422), ({"text": "x", "k": "many"}, 422),
                                         ({"text": "x", "target": "image"}, 422), ({"text": "x" * 1001}, 422),
                                         ({"text": "x", "where": ["nosuch=1"]}, 400),
                                         ({"text": "x", "where": ["age>=x"]}, 400),
                                         ({"text": "x", "where": ["a=1"] * 9}, 422),
                                         ({"text": "x", "extra": 1}, 422), ({}, 422)])
def test_bad_text_queries(client: TestClient, body: dict, status: int) -> None:
    assert_error(client.post(f"{API}/search/text", json=body), status)


def test_bad_json_body(client: TestClient) -> None:
    assert_error(client.post(f"{API}/search/text", content=b"{not json", headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("body,status", [({"id": "17"}, 400), ({"id": "17", "labels": ["a"], "task": "rhythm"}, 400),
                                         ({"id": "17", "task": "nosuchtask"}, 400),
                                         ({"id": "17", "task": "rhythm", "prompts": "/etc/passwd"}, 422),
                                         ({"id": "17", "labels": [f"l{i}" for i in range(51)]}, 422),
                                         ({"id": "17", "labels": ["x" * 201]}, 400), ({"id": "17", "labels": []}, 422)])
def test_bad_zeroshot_requests(client: TestClient, body: dict, status: int) -> None:
    assert_error(client.post(f"{API}/zeroshot/record", json=body), status)


@pytest.mark.parametrize("files,data,needle", [
    ([("file", ("x.png", b"\x89PNG...."))], {}, "cannot read an ECG from .png"),
    ([("file", ("x.mat", b"this is no matlab file"))], {}, "cannot read ECG x.mat"),
    ([("file", ("x.hea", b"garbage"))], {}, "needs its signal file"),
    ([("file", ("x.hea", b"garbage")), ("file", ("x.dat", b"\x00" * 10))], {}, "x.hea is no WFDB header"),
    ([("file", ("x.npy", b"not numpy"))], {"fs": "100", "layout": "leads-samples"}, "not a NumPy .npy"),
    ([("file", ("x.npy", b""))], {}, "needs its sampling rate and layout"),
])
def test_files_that_are_no_ecg(client: TestClient, files: list, data: dict, needle: str) -> None:
    msg = assert_error(client.post(f"{API}/search/upload", files=files, data=data), 400)
    assert needle in msg and "etp-upload-" not in msg  # the private temp folder is never named


def test_numpy_declarations_are_checked(client: TestClient) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1000, 12), np.float32))
    npy = [("file", ("x.npy", buf.getvalue()))]
    assert "check the layout" in assert_error(client.post(f"{API}/search/upload", files=npy,
                                              data={"fs": "100", "layout": "leads-samples"}), 400)
    assert "out of range" in assert_error(client.post(f"{API}/search/upload", files=npy,
                                          data={"fs": "1", "layout": "samples-leads"}), 400)
    assert "unknown unit" in assert_error(client.post(f"{API}/search/upload", files=npy,
                                          data={"fs": "100", "layout": "samples-leads", "units": "furlongs"}), 400)


def test_bad_k_on_upload_and_unknown_plot_format(client: TestClient) -> None:
    assert_error(client.post(f"{API}/search/upload", files=wfdb_files(), data={"k": "0"}), 422)
    assert "plot.png or plot.svg" in assert_error(client.get(f"{API}/records/17/plot.gif"), 400)
    assert_error(client.get(f"{API}/records/17/plot.png", params={"layout": "5x5"}), 422)
    assert_error(client.get(f"{API}/records/17/signal", params={"points": 5}), 422)


def test_unknown_endpoint_and_server_bug_are_json(client: TestClient, engine: Engine, monkeypatch) -> None:
    assert "no such endpoint" in assert_error(client.get(f"{API}/nothing"), 404)

    def broken() -> dict:
        raise RuntimeError("a bug with\na multi-line message")

    monkeypatch.setattr(engine, "info", broken)
    bug = TestClient(create_app(engine), raise_server_exceptions=False)
    r = bug.get(f"{API}/info")
    assert r.status_code == 500 and r.json() == {"error": "internal server error; the server log has the details"}
