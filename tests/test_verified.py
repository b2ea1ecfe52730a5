"""indexing.verified: an index file verified once is not re-hashed while it stays the same file, and
any write to it (in place, truncation, replace) still makes the next load hash it and name the damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import indexing.index_files as index_files
from indexing import verified
from indexing.errors import IndexStaleError
from indexing.build import build_index
from indexing.index_files import load_index, save_index


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own record, and no settle delay (files here are seconds old at most)."""
    monkeypatch.setenv("ETP_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ETP_VERIFY", raising=False)
    monkeypatch.setattr(verified, "_SETTLE_NS", 0)
    return tmp_path / "cache" / verified.RECORD_NAME


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the files load_index hashed, in order."""
    seen: list[int] = []
    real = index_files._digest_fd

    def counting(fd: int) -> tuple[str, int]:
        out = real(fd)
        seen.append(out[1])
        return out

    monkeypatch.setattr(index_files, "_digest_fd", counting)
    return seen


def _saved(tmp_path: Path, n: int = 400) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, info = build_index(x)
    path = tmp_path / "s.h5.ecg.faiss"
    save_index(index, path, dict(info, store_uuid="u", which="ecg"))
    return path, x


@pytest.fixture
def saved(tmp_path: Path, hashes: list[int]) -> tuple[Path, np.ndarray]:
    out = _saved(tmp_path)
    hashes.clear()  # the writer's own digest of what it wrote
    return out


def test_second_load_of_the_same_file_skips_the_hash(saved: tuple[Path, np.ndarray], tmp_path: Path, record: Path, hashes: list[int]) -> None:
    path, x = saved
    size = path.stat().st_size
    first, _ = load_index(path, "u", 400, which="ecg")
    assert hashes == [size]
    entry = json.loads(record.read_text())[os.path.realpath(path)]
    assert entry["sha256"] == json.loads(Path(f"{path}.json").read_text())["sha256"]
    second, _ = load_index(path, "u", 400, which="ecg")
    assert hashes == [size]  # not hashed again
    assert np.array_equal(second.search(x[:5], 3)[1], first.search(x[:5], 3)[1])


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace"])
def test_a_write_after_verification_is_still_caught(saved: tuple[Path, np.ndarray], tmp_path: Path, record: Path, hashes: list[int],
                                                    damage: str) -> None:
    path, _ = saved
    load_index(path, "u", 400)
    raw = bytearray(path.read_bytes())
    if damage == "flip":  # in place: same inode, same size
        with open(path, "r+b") as f:
            f.seek(len(raw) // 2)
            f.write(bytes([raw[len(raw) // 2] ^ 0xFF]))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, json.loads(record.read_text())[os.path.realpath(path)]["identity"][3]))
    elif damage == "truncate":
        os.truncate(path, len(raw) - 8)
    else:  # another file moved onto the name
        other = tmp_path / "other"
        raw[len(raw) // 2] ^= 0xFF
        other.write_bytes(bytes(raw))
        os.replace(other, path)
    with pytest.raises(IndexStaleError, match="rebuild-index") as err:
        load_index(path, "u", 400)
    assert ("size" if damage == "truncate" else "SHA-256") in str(err.value)
    assert len(hashes) >= 2  # the damaged file was hashed (on each retry), not trusted


def test_etp_verify_full_hashes_every_load(saved: tuple[Path, np.ndarray], tmp_path: Path, record: Path, hashes: list[int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = saved
    load_index(path, "u", 400)
    monkeypatch.setenv("ETP_VERIFY", "full")
    load_index(path, "u", 400)
    load_index(path, "u", 400)
    assert len(hashes) == 3


def test_a_file_written_just_now_is_not_remembered(saved: tuple[Path, np.ndarray], tmp_path: Path, record: Path, hashes: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verified, "_SETTLE_NS", 60_000_000_000)
    path, _ = saved
    load_index(path, "u", 400)
    load_index(path, "u", 400)
    assert len(hashes) == 2 and not record.exists()


def test_a_record_that_cannot_be_written_or_read_changes_nothing(saved: tuple[Path, np.ndarray], tmp_path: Path, record: Path,
                                                                  hashes: list[int],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = saved
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("ETP_SEARCH_CACHE", str(blocker / "cache"))  # mkdir under a file fails
    load_index(path, "u", 400)
    load_index(path, "u", 400)
    assert len(hashes) == 2
    monkeypatch.setenv("ETP_SEARCH_CACHE", str(record.parent))
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    load_index(path, "u", 400)
    assert len(hashes) == 3 and os.path.realpath(path) in json.loads(record.read_text())


def test_record_location_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETP_SEARCH_CACHE", str(tmp_path / "a"))
    assert verified.cache_file() == tmp_path / "a" / verified.RECORD_NAME
    monkeypatch.delenv("ETP_SEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert verified.cache_file() == tmp_path / "x" / "etp-search" / verified.RECORD_NAME


def test_ondisk_lists_are_remembered_and_a_flip_in_them_is_still_named(tmp_path: Path, record: Path,
                                                                       hashes: list[int]) -> None:
    from indexing.build import store_builder
    from indexing.index_files import build_or_update
    from indexing.store import EmbeddingStore

    n, dim = 6000, 16
    x = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "s.h5", dim, {"test": 1}, has_text=False)
    store.append([f"r{i}" for i in range(n)], x)
    build_or_update(store, "ecg", builder=store_builder(max_memory=n * dim * 2, ondisk=True, chunk_rows=3000), ondisk=True)
    path = Path(f"{store.path}.ecg.faiss")
    lists = Path(f"{path}.ivfdata")
    hashes.clear()
    load_index(path, store.uuid, n, which="ecg")
    assert sorted(hashes) == sorted([path.stat().st_size, lists.stat().st_size])
    load_index(path, store.uuid, n, which="ecg")
    assert len(hashes) == 2  # neither file hashed again
    with open(lists, "r+b") as f:
        f.seek(lists.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IndexStaleError, match="SHA-256") as err:
        load_index(path, store.uuid, n, which="ecg")
    assert str(lists) in str(err.value)
    store.close()
