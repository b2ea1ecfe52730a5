"""Shared fixtures: where the real data lives, and skipping cleanly where it is absent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The record of verified index files (indexing.verified) goes to a folder of this run, not to
    # the user's ~/.cache; CLI subprocesses inherit it. A test that studies the record sets its own.
    os.environ.setdefault("ETP_SEARCH_CACHE", tempfile.mkdtemp(prefix="etp-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_PTBXL = SHARED_DATA / "ptbxl"
SHARED_CPSC = SHARED_DATA / "cpsc2018"
#: The 50 PTB-XL records that ship inside the package (real data, CC BY 4.0).
EXAMPLE_PTBXL = ROOT / "etp_search" / "examples" / "ptbxl"


@pytest.fixture(scope="session")
def shared_ptbxl() -> Path:
    if not (SHARED_PTBXL / "ptbxl_database.csv").exists():
        pytest.skip("../shared/data/ptbxl is absent (only present on the development machines)")
    return SHARED_PTBXL


@pytest.fixture(scope="session")
def shared_cpsc() -> Path:
    if not (SHARED_CPSC / "REFERENCE.csv").exists():
        pytest.skip("../shared/data/cpsc2018 is absent (only present on the development machines)")
    return SHARED_CPSC


@pytest.fixture(scope="session")
def example_ptbxl() -> Path:
    assert (EXAMPLE_PTBXL / "ptbxl_database.csv").exists(), "shipped example data is missing"
    return EXAMPLE_PTBXL


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the 50 shipped example records (shipped checkpoint), built once per session."""
    from etp_search.export import index_data

    path = tmp_path_factory.mktemp("example-store") / "store.h5"
    index_data(EXAMPLE_PTBXL, path, workers=0, progress=False)
    return path
