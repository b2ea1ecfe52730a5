"""Shared CLI plumbing: one-line user errors, table/JSON output, logging set-up."""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Sequence, TypeVar

import typer

from etp_search.errors import EtpError
from etp_search.jsonsafe import to_jsonable
from indexing.errors import IndexingError  # indexing imports nothing of ours: its errors have their own base

F = TypeVar("F", bound=Callable[..., Any])

#: The one progress switch of every verb that draws bars (info, prepare, index, train, probe): tqdm
#: bars with items/s on stderr, on by default; --no-progress turns them off (logs, CI).
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars (items/s) on stderr.")]

#: Where `index` writes and `query`/`zeroshot`/`probe`/`retrieval` read when no --store is given.
DEFAULT_STORE = Path("etp-data") / "store.h5"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


_OS_FIXES = {errno.EACCES: "choose a folder you can write to (or fix its permissions)",
             errno.EPERM: "choose a folder you can write to (or fix its permissions)",
             errno.EROFS: "the file system is read-only: choose another folder",
             errno.ENOSPC: "the disk is full: free space, then run the same command again (finished work is kept)",
             errno.EDQUOT: "the disk quota is exceeded: free space, then run the same command again",
             # a path that cannot be made: a file where a folder should be, or a folder that cannot hold files
             errno.EEXIST: "a file stands where the path needs a folder: choose another path",
             errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
             errno.EISDIR: "the path is a folder, not a file: choose another path",
             errno.ENOENT: "its folder does not exist or cannot hold files: choose another path",
             errno.ENAMETOOLONG: "the path is too long: choose a shorter one"}
#: Codes for which the line says "cannot use PATH": the path itself is wrong, not the right to write it.
_PATH_CODES = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG}
_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_NAME = re.compile(r"name = '([^']*)'")  # h5py names the file only inside its message


def os_error_line(exc: OSError) -> str | None:
    """One line for an OSError a user can fix (permissions, read-only or full disk, a path that cannot
    be made), else None."""
    code = exc.errno
    if code is None:  # h5py folds the C errno into its message
        m = _H5_ERRNO.search(str(exc))
        code = int(m.group(1)) if m else None
        if code is None and "No space left" in str(exc):
            code = errno.ENOSPC
    fix = _OS_FIXES.get(code) if code is not None else None
    if code is None or fix is None:
        return None
    name = getattr(exc, "filename", None)
    if not name:
        m = _H5_NAME.search(str(exc))
        name = m.group(1) if m else None
    where = f" {name}" if name else ""
    return f"cannot {'use' if code in _PATH_CODES else 'write'}{where} ({os.strerror(code)}); {fix}"


#: What Ctrl-C says, by verb: the writers keep their finished work; a server just stops.
_INTERRUPTED = dict.fromkeys(("prepare", "index", "train"),
                             "interrupted: finished batches are kept; run the same command again to resume")
_INTERRUPTED["serve"] = "stopped"


def user_errors(fn: F) -> F:
    """Turn user-caused errors raised below the CLI into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EtpError, IndexingError) as exc:
            raise fail(str(exc)) from None
        except OSError as exc:  # a read-only folder or a full disk: the user's to fix, not a bug to trace
            message = os_error_line(exc)
            if message is None:
                raise
            raise fail(message) from None
        except KeyboardInterrupt:
            typer.echo(_INTERRUPTED.get(fn.__name__, "interrupted"), err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record is logged.

    ``basicConfig(stream=sys.stderr)`` binds the stream of the first call; typer's CliRunner (and
    pytest's capture) swap ``sys.stderr`` for a buffer they close afterwards, so every later record
    printed "--- Logging error --- ValueError: I/O operation on closed file" (the stdlib's
    ``logging.lastResort`` resolves the stream the same way).
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - whatever sys.stderr is now
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns one; ignored
        pass


def setup_logging(verbose: bool = False) -> None:
    """Our packages log at INFO (DEBUG with --verbose); third-party libraries only warnings.

    Like ``basicConfig``, a root logger that already has handlers (an application's own set-up) is
    left alone."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=[_CurrentStderr()])
    for name in ("etp_search", "indexing", "training"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def skip_rows(summary: dict[str, Any], shown: int = 3) -> list[dict[str, Any]]:
    """One table row per skip reason: the count and the first few record ids (``--json`` names up
    to 20 per reason in ``skipped_examples``, ``-v`` logs every one), so broken files can be found."""
    examples = summary.get("skipped_examples") or {}
    rows = []
    for reason, n in sorted((summary.get("skipped") or {}).items()):
        ids = examples.get(reason, [])[:shown]
        more = ", ..." if n > len(ids) else ""
        rows.append({"field": f"  skipped: {reason}", "value": f"{n} ({', '.join(ids)}{more})" if ids else n})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, max_width: int = 60) -> str:
    """Render dict rows as an aligned plain-text table (cells cut to max_width)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cut = lambda v: v if len(v) <= max_width else v[:max_width - 3] + "..."  # noqa: E731 - a cut is shown, never silent
    cells = [[cut(_cell(r.get(c, ""))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))


def emit(rows: Iterable[dict[str, Any]], as_json: bool, columns: Sequence[str] | None = None, title: str | None = None,
         max_width: int = 60) -> None:
    """Print rows as a table (with an optional title line) or as a JSON list."""
    rows = list(rows)
    if as_json:
        emit_json(rows)
        return
    if title:
        typer.echo(title)
    typer.echo(format_table(rows, columns, max_width))
