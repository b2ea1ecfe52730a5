"""The Python client mirrors ``Searcher``: the same hits over HTTP as in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from etp_search.search import Searcher, read_ecg_file  # noqa: E402
from etp_search.serve.app import create_app  # noqa: E402
from etp_search.serve.client import Client, ServerError  # noqa: E402
from etp_search.serve.engine import Engine  # noqa: E402

REC = Path(__file__).resolve().parents[1] / "etp_search" / "examples" / "ptbxl" / "records100" / "00000" / "00017_lr.hea"


@pytest.fixture(scope="module")
def pair(example_store: Path):
    eng = Engine(example_store, refresh_s=0, workers=1)
    with Searcher.open(example_store) as s:
        yield Client(http=TestClient(create_app(eng, token="tok")), token="tok"), s
    eng.close()


def same(a, b) -> None:
    assert [(h.rank, h.id, h.row, h.text, h.labels) for h in a] == [(h.rank, h.id, h.row, h.text, h.labels) for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert a[0].meta["strat_fold"] == b[0].meta["strat_fold"]


def test_client_mirrors_searcher(pair) -> None:
    client, s = pair
    same(client.query_text("atrial fibrillation", k=5, where=["age>=50"]), s.query_text("atrial fibrillation", 5, where=["age>=50"]))
    same(client.query_record("17", k=5, target="report"), s.query_record("17", 5, target="report"))
    same(client.query_file(REC, k=5), s.query_file(REC, k=5))
    sig = read_ecg_file(REC)
    same(client.query_signal(sig.signal, sig.fs, k=5), s.query_signal(sig.signal, sig.fs, k=5))


def test_client_records_plots_zeroshot(pair) -> None:
    client, _ = pair
    assert client.health() == {"status": "ok", "rows": 50}
    assert client.info()["rows"] == 50 and client.record("17")["id"] == "17"
    assert client.plot("17")[:4] == b"\x89PNG" and b"<svg" in client.plot("17", "svg")[:2000]
    a = client.zeroshot_record("17", labels=["atrial fibrillation", "sinus rhythm"])
    b = client.zeroshot_file(REC, labels=["atrial fibrillation", "sinus rhythm"])
    assert [c["label"] for c in a] == [c["label"] for c in b]
    np.testing.assert_allclose([c["score"] for c in a], [c["score"] for c in b], atol=1e-4)
    assert len(client.zeroshot_record("17", task="rhythm")) > 3


def test_client_errors_carry_the_servers_line(pair) -> None:
    client, _ = pair
    with pytest.raises(ServerError) as e:
        client.query_record("nope")
    assert e.value.status == 404 and "'nope' is not in store" in str(e.value)
    with pytest.raises(ServerError) as e:
        Client(http=client._http).health()  # no token
    assert e.value.status == 401
