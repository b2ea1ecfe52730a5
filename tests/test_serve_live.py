"""Live store: while a real `etp-search index` process appends, the server keeps answering from whole
batches and picks up the new rows without a restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from etp_search.search import Searcher  # noqa: E402
from etp_search.serve.app import create_app  # noqa: E402
from etp_search.serve.engine import Engine  # noqa: E402

API = "/api/v1"
BATCH = 5
FIRST = 20


def _partial_copy(src: Path, dst: Path, stems: list[str]) -> None:
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copy(src / name, dst / name)
    (dst / "records100" / "00000").mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for ext in (".hea", ".dat"):
            shutil.copy(src / "records100" / "00000" / f"{stem}{ext}", dst / "records100" / "00000" / f"{stem}{ext}")


@pytest.mark.slow
def test_server_follows_a_growing_store(example_ptbxl: Path, tmp_path: Path) -> None:
    from etp_search.export import index_data

    stems = sorted(p.stem for p in (example_ptbxl / "records100" / "00000").glob("*.hea"))
    data, store = tmp_path / "ptbxl", tmp_path / "store.h5"
    data.mkdir()
    _partial_copy(example_ptbxl, data, stems[:FIRST])  # a partial download: rows without files are skipped
    index_data(data, store, workers=0, progress=False)
    engine = Engine(store, refresh_s=0.1, workers=2)
    try:
        client = TestClient(create_app(engine))
        assert client.get(f"{API}/health").json()["rows"] == FIRST
        _partial_copy(example_ptbxl, data, stems[FIRST:])  # the rest of the download arrives
        proc = subprocess.Popen([sys.executable, "-c", "from etp_search.cli import main; main()", "index", str(data), "--store", str(store),
                                 "--batch-size", str(BATCH), "--workers", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen, errors = [], []
        while proc.poll() is None or len(seen) < 3:
            r = client.post(f"{API}/search/text", json={"text": "sinus rhythm", "k": 50})
            if r.status_code != 200:
                errors.append(r.text)
                break
            body = r.json()
            rows = [h["row"] for h in body["hits"]]
            seen.append(body["rows"])
            # answers come from whole batches, and never name a row the answer's view does not hold
            assert len(rows) == body["rows"] and sorted(rows) == list(range(body["rows"]))
            if proc.poll() is not None:
                time.sleep(0.2)
        out = proc.communicate()[0]
        assert proc.returncode == 0, out
        assert not errors, errors
        deadline = time.time() + 10
        while engine.snapshot.n < 50 and time.time() < deadline:
            time.sleep(0.1)
        assert engine.snapshot.n == 50
        assert seen == sorted(seen) and seen[0] == FIRST  # never goes back
        assert all((n - FIRST) % BATCH == 0 for n in seen), seen  # whole batches only
        assert len(set(seen)) >= 2, f"never saw the store grow while index ran: {seen}"
        # after the run the server answers exactly like a fresh Searcher over the final store
        got = client.post(f"{API}/search/text", json={"text": "atrial fibrillation", "k": 10}).json()["hits"]
        with Searcher.open(store) as s:
            want = s.query_text("atrial fibrillation", k=10)
            new_id = s.store.ids[-1]
        assert [h["id"] for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
        assert client.post(f"{API}/search/record", json={"id": new_id, "k": 3}).status_code == 200
    finally:
        engine.close()
