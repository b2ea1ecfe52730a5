"""Signal cache: content equals reader + preprocess, resumption after a crash is bit-identical."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from etp_search import __version__
from etp_search.errors import DataError, EtpError
from etp_search.preprocess import get_preset, preprocess
from etp_search.readers import SkipRecord, open_dataset
from etp_search.signal_cache import SignalCache, build_cache, is_signal_cache
from indexing._crash import CrashRequested, crash_at

N = 40  # records: enough for several batches, small enough for a 2-core CI


class Head:
    """The first ``n`` records of a reader; optionally failing some refs (module level: picklable)."""

    def __init__(self, reader, n: int, skip: tuple[str, ...] = (), crash: tuple[str, ...] = ()):
        self._r, self._refs = reader, reader.refs()[:n]
        self._skip, self._crash = set(skip), set(crash)
        self.format_name, self.root, self.fs = reader.format_name, reader.root, reader.fs
        self.text_source, self.summary = reader.text_source, reader.summary

    def refs(self):
        return list(self._refs)

    def read(self, ref):
        if ref in self._skip:
            raise SkipRecord("truncated signal", ref)
        if ref in self._crash:
            raise ValueError("a bug in some library")
        return self._r.read(ref)


@pytest.fixture(scope="module")
def reader(example_ptbxl):
    return Head(open_dataset(example_ptbxl), N)


@pytest.fixture(scope="module")
def built(reader, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "ref.h5"
    summary = build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    assert summary["records"] == N and summary["skipped"] == {} and not summary["up_to_date"]
    return out


def _assert_same_cache(a: Path, b: Path) -> None:
    with SignalCache.open(a) as x, SignalCache.open(b) as y:
        assert x.ids == y.ids
        np.testing.assert_array_equal(x.signals(), y.signals())  # bit-identical
        assert x.labels() == y.labels()
        assert x.text_sources == y.text_sources
        for s in x.text_sources:
            assert x.texts(s) == y.texts(s)
        for col in x.meta_columns:
            np.testing.assert_array_equal(x.meta(col), y.meta(col))


def test_cache_content_equals_reader_plus_preprocess(reader, built):
    with SignalCache.open(built) as c:
        assert len(c) == N and c.ids == reader.refs()
        assert c.signals().shape == (N, 12, 1000) and c.signals().dtype == np.float32
        assert c.preset == get_preset("etp-100hz") and c.fs == 100
        for i in (0, 17, N - 1):
            rec = reader.read(c.ids[i])
            np.testing.assert_array_equal(c.signal(i), preprocess(rec.signal, rec.fs, "etp-100hz")[0])
            assert c.labels()[i] == rec.labels
            assert c.texts()[i] == rec.text and c.texts("scp_en")[i] == rec.text
            assert c.texts("report")[i] == rec.meta["texts"]["report"]
            assert c.meta("age")[i] == np.float32(rec.meta["age"])
            assert c.meta("sex")[i] == rec.meta["sex"] and c.meta("strat_fold")[i] == rec.meta["strat_fold"]
            assert c.meta("patient_id")[i] == str(rec.meta["patient_id"])
            assert c.meta("source")[i] == rec.meta["source"]
        assert set(c.text_sources) == {"scp_en", "report"}
        assert c.attrs["format"] == "ptbxl" and c.attrs["package_version"] == __version__
        assert c.attrs["text_source"] == "scp_en" and Path(c.attrs["data_dir"]) == Path(reader.root).resolve()
        assert c.attrs["preset"]["name"] == "etp-100hz"
    assert is_signal_cache(built)


def test_random_index_reads_match_full_array(built):
    with SignalCache.open(built) as c:
        full = c.signals()
        for ix in ([5, 3, 3, 30], np.array([0, 1, 2, 39]), [-1], []):
            np.testing.assert_array_equal(c.signals(ix), full[np.asarray(ix, dtype=int)])
        np.testing.assert_array_equal(c.signals(slice(8, 16)), full[8:16])
        with pytest.raises(IndexError):
            c.signals([N])
        clone = pickle.loads(pickle.dumps(c))  # what a DataLoader worker receives
        np.testing.assert_array_equal(clone.signals([7]), full[[7]])


def test_parallel_build_is_identical_to_in_process(reader, built, tmp_path):
    out = tmp_path / "pool.h5"
    build_cache(reader, out, "etp-100hz", workers=2, batch_size=8, progress=False)
    _assert_same_cache(built, out)


def test_crash_then_resume_is_bit_identical(reader, built, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(CrashRequested), crash_at("after-batch", nth=2):
        build_cache(reader, out, "etp-100hz", workers=2, batch_size=8, progress=False)
    partial = tmp_path / "c.h5.partial"
    assert not out.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        assert int(f.attrs["refs_done"]) == 16 and not f.attrs.get("complete", False)
    summary = build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    assert summary["resumed_from"] == 16 and summary["records"] == N
    assert not partial.exists()
    _assert_same_cache(built, out)


def test_rows_written_after_the_last_commit_are_redone(reader, built, tmp_path):
    # Simulate a crash between writing a batch's rows and committing its counter.
    out = tmp_path / "c.h5"
    with pytest.raises(CrashRequested), crash_at("after-batch", nth=2):
        build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    with h5py.File(tmp_path / "c.h5.partial", "a") as f:
        f.attrs["rows"] = 8
        f.attrs["refs_done"] = 8
        f["signals"][8:16] = 123.0  # garbage in the uncommitted rows
    assert build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)["resumed_from"] == 8
    _assert_same_cache(built, out)


def test_rerun_is_up_to_date_other_settings_need_force(reader, built, tmp_path):
    out = tmp_path / "c.h5"
    build_cache(reader, out, "raw-100hz", workers=0, batch_size=16, progress=False)
    again = build_cache(reader, out, "raw-100hz", workers=0, progress=False)
    assert again["up_to_date"] and again["records"] == N
    with pytest.raises(DataError, match="--force"):
        build_cache(reader, out, "etp-100hz", workers=0, progress=False)
    build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False, force=True)
    _assert_same_cache(built, out)


def test_failed_rebuild_leaves_the_finished_cache_untouched(reader, built, tmp_path):
    out = tmp_path / "c.h5"
    out.write_bytes(built.read_bytes())
    with pytest.raises(CrashRequested), crash_at("after-batch", nth=1):
        build_cache(reader, out, "raw-100hz", workers=0, batch_size=8, progress=False, force=True)
    _assert_same_cache(built, out)


def test_corrupt_or_foreign_partial_restarts_with_warning(reader, built, tmp_path, caplog):
    out = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a file cut off right after the signature
    with caplog.at_level(logging.WARNING, logger="etp_search.signal_cache"):
        s = build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    assert "unreadable" in caplog.text and s["resumed_from"] is None
    _assert_same_cache(built, out)
    # A partial of another preset is not resumed into this one.
    out.unlink()
    with pytest.raises(CrashRequested), crash_at("after-batch", nth=1):
        build_cache(reader, out, "raw-100hz", workers=0, batch_size=8, progress=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etp_search.signal_cache"):
        s = build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    assert "different settings (preset)" in caplog.text and s["resumed_from"] is None
    _assert_same_cache(built, out)


def test_bad_records_are_skipped_and_counted(shared_ptbxl, tmp_path):
    base = open_dataset(shared_ptbxl)
    refs = base.refs()[:12]
    r = Head(base, 12, skip=(refs[2], refs[5]), crash=(refs[7],))
    s = build_cache(r, tmp_path / "s.h5", workers=2, batch_size=4, progress=False)
    assert s["records"] == 9 and s["skipped"] == {"truncated signal": 2, "error: ValueError": 1}
    assert s["missing_files"] == base.summary.missing_files > 0
    with SignalCache.open(tmp_path / "s.h5") as c:
        assert c.ids == [x for i, x in enumerate(refs) if i not in (2, 5, 7)]
        assert c.attrs["skipped"] == s["skipped"]


def test_open_errors_are_one_line_user_errors(built, tmp_path):
    with pytest.raises(DataError, match="prepare"):
        SignalCache.open(tmp_path / "absent.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        SignalCache.open(tmp_path / "x.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(DataError, match="not a signal cache"):
        SignalCache.open(tmp_path / "other.h5")
    assert not is_signal_cache(tmp_path / "other.h5")
    with SignalCache.open(built) as c:
        with pytest.raises(EtpError, match="report, scp_en"):
            c.texts("column:nurse")
        with pytest.raises(EtpError, match="age"):
            c.meta("height")
        assert json.loads(json.dumps(c.attrs))  # attrs are plain JSON-able values


def test_partial_without_a_finished_batch_is_restarted_without_a_settings_warning(reader, built, tmp_path, caplog):
    # Interrupted before its first commit: the same settings, no batch; it said "different settings ()".
    from etp_search.signal_cache.build import _config, _open_partial

    out = tmp_path / "c.h5"
    _open_partial(tmp_path / "c.h5.partial", _config(reader, get_preset("etp-100hz"), reader.refs())).close()
    with caplog.at_level(logging.INFO, logger="etp_search.signal_cache"):
        s = build_cache(reader, out, "etp-100hz", workers=0, batch_size=8, progress=False)
    assert "different settings" not in caplog.text and "holds no finished batch" in caplog.text
    assert s["resumed_from"] is None
    _assert_same_cache(built, out)
