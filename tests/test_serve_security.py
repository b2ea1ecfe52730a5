"""Safe defaults of `etp-search serve`: token, bind rule, size limit, host check, CORS, private uploads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from etp_search.cli import _register, app as cli_app  # noqa: E402
from etp_search.errors import EtpError  # noqa: E402
from etp_search.serve.app import create_app  # noqa: E402
from etp_search.serve.engine import Engine  # noqa: E402
from etp_search.serve.security import LOOPBACK_NAMES, check_bind, is_loopback  # noqa: E402
from etp_search.serve.uploads import UploadedFile, UploadError, parse_upload, safe_name  # noqa: E402

API = "/api/v1"
REC_DIR = Path(__file__).resolve().parents[1] / "etp_search" / "examples" / "ptbxl" / "records100" / "00000"


@pytest.fixture(scope="module")
def engine(example_store: Path):
    eng = Engine(example_store, refresh_s=0, workers=1)
    yield eng
    eng.close()


def pair(stem: str = "00009_lr") -> list:
    return [("file", (f"{stem}.hea", (REC_DIR / f"{stem}.hea").read_bytes())),
            ("file", (f"{stem}.dat", (REC_DIR / f"{stem}.dat").read_bytes()))]


# ---------------------------------------------------------------- token

def test_token_checked_on_every_api_call(engine: Engine) -> None:
    c = TestClient(create_app(engine, token="s3cret-token"))
    calls = [("get", "/health", {}), ("get", "/info", {}), ("get", "/records/17", {}),
             ("get", "/records/17/plot.png", {}), ("get", "/records/17/signal", {}),
             ("post", "/search/text", {"json": {"text": "x"}}), ("post", "/search/record", {"json": {"id": "17"}}),
             ("post", "/search/upload", {"files": pair()}), ("post", "/zeroshot/record", {"json": {"id": "17", "labels": ["a"]}}),
             ("post", "/zeroshot/upload", {"files": pair(), "data": {"labels": "a"}})]
    for method, path, kw in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            r = getattr(c, method)(API + path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers)
            assert "bearer token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer s3cret-token"}
    assert c.get(f"{API}/health", headers=ok).status_code == 200
    assert c.post(f"{API}/search/text", json={"text": "atrial fibrillation"}, headers=ok).status_code == 200
    assert c.get(f"{API}/info", headers=ok).json()["auth"] == "bearer"
    # the page itself holds no data: it loads, then asks for the token
    assert c.get("/").status_code == 200 and "token-form" in c.get("/").text
    assert "HTTPBearer" in str(c.get("/openapi.json").json()["components"]["securitySchemes"])


def test_bind_rule() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "tok", False)
    check_bind("0.0.0.0", None, True)
    for args in (("0.0.0.0", None, False), ("0.0.0.0", "  ", False), ("0.0.0.0", "tok", True)):
        with pytest.raises(EtpError):
            check_bind(*args)


def test_cli_refuses_open_bind_before_loading_anything(tmp_path: Path) -> None:
    _register()
    r = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--store", str(tmp_path / "none.h5")])
    assert r.exit_code == 1
    assert "--token" in r.output and "--no-auth" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli_app, ["serve", "--store", str(tmp_path / "none.h5")])
    assert r.exit_code == 1 and "no embedding store" in r.output


# ---------------------------------------------------------------- size limit

def test_oversized_upload_is_413_before_parsing(engine: Engine, monkeypatch) -> None:
    import etp_search.serve.app as app_mod

    parsed = []
    monkeypatch.setattr(app_mod, "parse_upload", lambda *a: parsed.append(a))
    c = TestClient(create_app(engine, max_upload=10_000))  # the pair is ~24 kB
    r = c.post(f"{API}/search/upload", files=pair())
    assert r.status_code == 413 and "over" in r.json()["error"] and not parsed

    def chunks():  # no Content-Length: the guard counts streamed bytes
        for _ in range(20):
            yield b"x" * 1000

    r = c.post(f"{API}/search/text", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and list(r.json()) == ["error"]
    assert c.post(f"{API}/search/text", json={"text": "atrial fibrillation"}).status_code == 200


# ---------------------------------------------------------------- host check and CORS

def test_loopback_server_answers_only_loopback_host_names(engine: Engine) -> None:
    c = TestClient(create_app(engine, allowed_hosts=LOOPBACK_NAMES), base_url="http://127.0.0.1:8000")
    assert c.get(f"{API}/health").status_code == 200
    assert c.get(f"{API}/health", headers={"host": "localhost:8000"}).status_code == 200
    r = c.get(f"{API}/health", headers={"host": "attacker.example:8000"})
    assert r.status_code == 400 and "localhost" in r.json()["error"]
    assert c.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_cors_off_unless_asked(engine: Engine) -> None:
    origin = {"Origin": "http://other.example"}
    off = TestClient(create_app(engine))
    assert "access-control-allow-origin" not in off.get(f"{API}/health", headers=origin).headers
    on = TestClient(create_app(engine, cors_origins=("http://other.example",)))
    assert on.get(f"{API}/health", headers=origin).headers["access-control-allow-origin"] == "http://other.example"
    pre = on.options(f"{API}/search/text", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200


# ---------------------------------------------------------------- uploads: names, temp folder, formats

@pytest.mark.parametrize("name", [".hidden.hea", "x..hea", "", "a b.hea", "..", "a/..", "x.hea\x00.dat", "é.hea"])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(UploadError):
        safe_name(name)


@pytest.mark.parametrize("name,kept", [("../x.hea", "x.hea"), ("/etc/passwd", "passwd"),
                                       ("C:\\Users\\me\\00009_lr.hea", "00009_lr.hea")])
def test_client_folders_are_dropped(name: str, kept: str) -> None:
    """Only the last path component is ever used, and only inside the server's private folder."""
    assert safe_name(name) == kept


def test_header_cannot_point_outside_the_upload(tmp_path: Path) -> None:
    secret = tmp_path / "secret.dat"
    secret.write_bytes((REC_DIR / "00009_lr.dat").read_bytes())
    hea = (REC_DIR / "00009_lr.hea").read_text().replace("00009_lr.dat", f"../../../../..{secret}")
    with pytest.raises(UploadError, match="not a plain file name"):
        parse_upload([UploadedFile("x.hea", hea.encode()), UploadedFile("x.dat", b"\0" * 24000)])


def test_upload_folder_is_private_and_removed(monkeypatch, tmp_path: Path) -> None:
    import tempfile

    import etp_search.search as search_mod
    import etp_search.serve.uploads as uploads_mod

    # in memory where the system has a tmpfs, else the default temp folder
    assert uploads_mod.UPLOAD_TMP == ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(uploads_mod, "UPLOAD_TMP", None if uploads_mod.UPLOAD_TMP is None else str(tmp_path))
    seen = {}
    real = search_mod.read_ecg_file

    def spy(path):
        seen["dir"], seen["mode"] = Path(path).parent, stat.S_IMODE(os.stat(Path(path).parent).st_mode)
        seen["files"] = sorted(p.name for p in Path(path).parent.iterdir())
        return real(path)

    monkeypatch.setattr(search_mod, "read_ecg_file", spy)
    renamed = [UploadedFile("00009_lr.hea", (REC_DIR / "00009_lr.hea").read_bytes()),
               UploadedFile("00009_lr (1).dat", (REC_DIR / "00009_lr.dat").read_bytes())]
    rec = parse_upload(renamed)
    assert rec.signal.shape == (12, 1000)
    assert seen["mode"] == 0o700 and seen["dir"].parent == tmp_path
    assert seen["files"] == ["00009_lr.dat", "00009_lr.hea"]  # saved under the name the header gives
    assert not seen["dir"].exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UploadError):
        parse_upload([UploadedFile("x.mat", b"junk")])
    assert list(tmp_path.iterdir()) == []  # removed after a failed parse too


def test_cinc_and_original_cpsc_uploads(engine: Engine, shared_cpsc: Path, tmp_path: Path) -> None:
    """A CinC .hea + .mat and the same record as an original CPSC2018 .mat give the same ECG and hits."""
    import scipy.io

    from etp_search.search import read_ecg_file

    cinc = shared_cpsc / "cinc2020"
    want = read_ecg_file(cinc / "A0001.hea")
    c = TestClient(create_app(engine))
    files = [("file", ("A0001.hea", (cinc / "A0001.hea").read_bytes())), ("file", ("A0001.mat", (cinc / "A0001.mat").read_bytes()))]
    a = c.post(f"{API}/search/upload", files=files, data={"k": "5"}).json()
    assert a["query"]["fs"] == 500.0 and abs(a["query"]["seconds"] - want.duration_s) < 1e-6
    scipy.io.savemat(tmp_path / "A0001.mat", {"ECG": {"sex": "Male", "age": 74.0, "data": want.signal.astype(np.float64)}})
    b = c.post(f"{API}/search/upload", files=[("file", ("A0001.mat", (tmp_path / "A0001.mat").read_bytes()))],
               data={"k": "5"}).json()
    assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]
    np.testing.assert_allclose([h["score"] for h in a["hits"]], [h["score"] for h in b["hits"]], atol=1e-4)
    # the CinC .mat alone has no gains or rate: refused with what to add
    r = c.post(f"{API}/search/upload", files=[files[1]])
    assert r.status_code == 400 and "A0001.hea" in r.json()["error"]


def test_shared_numpy_archive_upload(engine: Engine) -> None:
    """A real ptbxl-npy100 array (samples x leads, 100 Hz) is searchable with its declared layout."""
    npy_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl-npy100" / "signals"
    if not npy_dir.is_dir():
        pytest.skip("../shared/data/ptbxl-npy100 is absent")
    path = sorted(npy_dir.glob("*.npy"))[0]
    c = TestClient(create_app(engine))
    r = c.post(f"{API}/search/upload", files=[("file", (path.name, path.read_bytes()))],
               data={"fs": "100", "layout": "samples-leads", "k": "3"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3 and r.json()["query"]["seconds"] == 10.0
    wrong = c.post(f"{API}/search/upload", files=[("file", (path.name, path.read_bytes()))],
                   data={"fs": "100", "layout": "leads-samples"})
    assert wrong.status_code == 400 and "check the layout" in wrong.json()["error"]


def test_cli_names_a_taken_port_before_loading_the_model(example_store: Path) -> None:
    import socket

    _register()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(cli_app, ["serve", "--store", str(example_store), "--port", str(port)])
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output
    assert len(r.output.strip().splitlines()) == 1
