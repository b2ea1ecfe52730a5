"""Tracebacks where a user needs one line (issue 11.7-11.9): OS errors, undecodable text, huge numbers."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from etp_search.cli import _register, app
from etp_search.cli.common import os_error_line, user_errors

_register()
cli = CliRunner()


@pytest.mark.parametrize("exc, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/ro/store.h5"), "cannot write /ro/store.h5 (Permission denied)"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/store.h5.parts/p1.h5"), "the disk is full"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/x.h5"), "read-only"),
    (OSError("Unable to synchronously create file (unable to open file: name = 'x', errno = 13, error message = "
             "'Permission denied', flags = 13)"), "cannot write x (Permission denied)"),
    # what h5py raised for `prepare --out` into a folder a non-root user cannot write: errno set, no filename
    (PermissionError(errno.EACCES, "Unable to synchronously create file (unable to open file: name = "
                     "'out/c.h5.partial', errno = 13, error message = 'Permission denied', flags = 13, o_flags = 242)"),
     "cannot write out/c.h5.partial (Permission denied)"),
])
def test_os_errors_a_user_can_fix_are_one_line(exc, words, capsys):
    @user_errors
    def command() -> None:
        raise exc

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_other_os_errors_are_not_hidden():
    assert os_error_line(OSError(errno.EIO, "I/O error")) is None


@pytest.mark.parametrize("verb", ["index", "prepare"])
def test_an_output_path_under_a_file_is_one_line(verb, tmp_path, example_ptbxl):
    """--store / --out under a path that is a file, or in a folder that cannot hold files: tracebacks
    (FileExistsError from mkdir, FileNotFoundError from the lock file) before; one line now."""
    (tmp_path / "afile").write_text("x")
    flag = "--store" if verb == "index" else "--out"
    for target, words in ((tmp_path / "afile" / "s.h5", "a file stands where the path needs a folder"),
                          (Path("/proc/etp-store.h5"), "cannot use")):
        res = cli.invoke(app, [verb, str(example_ptbxl), flag, str(target), "--workers", "0", "--no-progress"])
        assert res.exit_code == 1, res.output
        assert words in res.output and "Traceback" not in res.output and res.output.count("error:") == 1


def test_query_text_with_undecodable_bytes_is_one_line(example_store):
    res = cli.invoke(app, ["query", "--store", str(example_store), "--text", "atrial \udcff fibrillation"])
    assert res.exit_code == 1
    assert "not valid UTF-8" in res.output and "Traceback" not in res.output


def test_n_boot_is_bounded(example_store):
    res = cli.invoke(app, ["zeroshot", "--store", str(example_store), "--n-boot", "100000000"])
    assert res.exit_code == 2 and "less than or equal to 100000" in res.output


def test_logging_after_a_cli_runner_invoke_reaches_the_current_stderr(tmp_path):
    """setup_logging bound its handler to the stderr of the first call; under typer's CliRunner that
    is a buffer closed after invoke, so later records printed '--- Logging error ---'. Run in a fresh
    interpreter: pytest's own log handlers on the root logger would hide it here."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import logging\n"
        "from typer.testing import CliRunner\n"
        "from etp_search.cli import _register, app\n"
        "_register()\n"
        f"res = CliRunner().invoke(app, ['query', '--store', {str(tmp_path / 'none.h5')!r}, '--text', 'x'])\n"
        "assert res.exit_code == 1 and 'no embedding store' in res.output, res.output\n"
        "logging.getLogger('etp_search.check').warning('after the runner')\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Logging error" not in res.stderr and "WARNING etp_search.check: after the runner" in res.stderr


def test_a_store_whose_random_init_folder_was_deleted_names_the_missing_folder(example_ptbxl, tmp_path):
    """It used to fall back to the shipped checkpoint and report a SHA mismatch with it."""
    import shutil

    from etp_search.export import index_data

    store = tmp_path / "rand.h5"
    index_data(example_ptbxl, store, "random", workers=0, progress=False)
    shutil.rmtree(tmp_path / "rand.h5.random-init")
    rec = example_ptbxl / "records100" / "00000" / "00038_lr.hea"
    res = cli.invoke(app, ["query", "--store", str(store), "--ecg", str(rec), "-k", "3"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "rand.h5.random-init, which no longer exists" in lines[0] and "--checkpoint random" in lines[0]
    assert "pass the store's checkpoint" not in lines[0]  # not a mismatch with the shipped checkpoint
    index_data(example_ptbxl, store, "random", workers=0, progress=False)  # the same command makes it again
    res = cli.invoke(app, ["query", "--store", str(store), "--ecg", str(rec), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    # --checkpoint random on a query means this store's random-init folder, not etp-data/store.h5's
    ok = cli.invoke(app, ["query", "--store", str(store), "--ecg", str(rec), "-k", "3", "--json", "--checkpoint", "random"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["hits"] == json.loads(res.stdout)["hits"]


def test_query_with_checkpoint_random_writes_nothing(example_store, tmp_path, monkeypatch):
    """A query wrote a 36 MB etp-data/store.h5.random-init/ into the working folder (the default
    store's name, whatever --store said), then refused it as not the store's checkpoint."""
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["query", "--store", str(example_store), "--text", "afib", "--checkpoint", "random"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert f"no random-init checkpoint beside {example_store}" in lines[0] and "--checkpoint random --store" in lines[0]
    assert list(tmp_path.iterdir()) == [] and not Path(str(example_store) + ".random-init").exists()


def test_a_failed_atomic_write_names_the_file_the_user_asked_for(tmp_path):
    """`query --plot` into an unwritable folder named `.tmp-<uuid>-p.png`, the temporary name."""
    from indexing._io import atomic_write

    final = tmp_path / "missing" / "p.png"
    with pytest.raises(FileNotFoundError) as exc:  # the folder is absent: the temporary file cannot be opened
        atomic_write(final, lambda tmp: tmp.write_bytes(b"x"))
    assert exc.value.filename == str(final)

    def h5py_like(tmp):  # h5py names the file only inside its message
        raise PermissionError(errno.EACCES, f"Unable to create file (unable to open file: name = '{tmp}', errno = 13)")

    with pytest.raises(PermissionError) as exc:
        atomic_write(final, h5py_like)
    assert os_error_line(exc.value).startswith(f"cannot write {final} (Permission denied)")


@pytest.mark.parametrize("verb, says", [("index", "finished batches are kept"), ("serve", "stopped"),
                                        ("query", "interrupted")])
def test_ctrl_c_says_what_was_kept_by_verb(verb, says, capsys):
    """One message for every verb told a stopped server or a query that finished batches were kept."""
    def command() -> None:
        raise KeyboardInterrupt

    command.__name__ = verb
    with pytest.raises(typer.Exit) as e:
        user_errors(command)()
    err = capsys.readouterr().err.strip()
    assert e.value.exit_code == 130 and says in err and (verb == "index") == ("resume" in err)


def test_a_query_longer_than_the_text_tower_reads_is_one_line_and_titles_are_one_line(example_store):
    long = "atrial fibrillation " * 2000
    res = cli.invoke(app, ["query", "--store", str(example_store), "--text", long])
    assert res.exit_code == 1 and "40,000 characters" in res.output and "at most 1000" in res.output
    res = cli.invoke(app, ["query", "--store", str(example_store), "--text", "atrial\nfibrillation\tflutter", "-k", "2"])
    assert res.exit_code == 0, res.output
    assert 'text: "atrial fibrillation flutter" -> top 2' in res.stdout
