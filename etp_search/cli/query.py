"""`etp-search query`: text -> ECG, ECG -> ECG, ECG -> report over the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from etp_search.cli.common import DEFAULT_STORE, emit, emit_json, fail, setup_logging, user_errors

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _label_str(labels: dict[str, float]) -> str:
    return " ".join(sorted(labels, key=lambda c: -float(labels[c] or 0)))


@user_errors
def query(
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Report text to search with.")] = None,
    ecg: Annotated[Optional[Path], typer.Option("--ecg", help="An ECG file to search with: WFDB record (.hea), .mat, or .npy (with --fs and --layout).")] = None,
    record: Annotated[Optional[str], typer.Option("--record", help="Id of an ECG already in the store.")] = None,
    target: Annotated[str, typer.Option(help="What to return: 'ecg' or 'report'.")] = "ecg",
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    where: Annotated[Optional[list[str]], typer.Option("--where", "-w", help="Metadata filter, repeatable: strat_fold=10, sex=0, age>=60, label=AFIB.")] = None,
    store: Annotated[Path, typer.Option(help="Embedding store written by `etp-search index`.")] = DEFAULT_STORE,
    checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint for encoding the query; default: the store's.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: auto).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the query and top hits as 12-lead ECGs (PNG or PDF).")] = None,
    fs: Annotated[Optional[float], typer.Option("--fs", help="--ecg X.npy: its sampling rate in Hz.")] = None,
    layout: Annotated[Optional[str], typer.Option(help="--ecg X.npy: 'samples x leads' or 'leads x samples' (standard lead order).")] = None,
    unit: Annotated[str, typer.Option(help="--ecg X.npy: mV, uV, V or sd (per-lead standardised).")] = "mV",
    json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    """Search the store with a text, an ECG file or a stored ECG; prints id, score, labels, report."""
    setup_logging(verbose)
    given = [name for name, v in (("--text", text), ("--ecg", ecg), ("--record", record)) if v is not None]
    if len(given) != 1:
        raise fail("give exactly one of --text, --ecg or --record" + (f" (got {', '.join(given)})" if given else ""))
    if plot is not None and (plot.is_dir() or plot.suffix.lower() not in PLOT_SUFFIXES):
        raise fail(f"--plot {plot}: give a file name ending in {', '.join(PLOT_SUFFIXES)}, e.g. --plot hits.png")
    from etp_search.search import Searcher, check_target

    with Searcher.open(store, checkpoint=checkpoint, device=device) as s:
        query_signal = None
        to = check_target(target)
        if text is not None:
            hits = s.query_text(text, k, to, where or ())
            shown = " ".join(text.split())  # newlines and tabs would split the table's title
            title = f'text: "{shown if len(shown) <= 80 else shown[:77] + "..."}"'
            json_title = f'text: "{text}"'
        elif ecg is not None:
            rec = _read_query_ecg(ecg, fs, layout, unit)
            query_signal = (rec.signal, rec.fs)
            hits = s.query_signal(rec.signal, rec.fs, k, to, where or ())
            title = json_title = f"ECG file: {ecg}"
        else:
            hits = s.query_record(str(record), k, to, where or ())
            title = json_title = f"record {record}"
        if plot is not None:
            _plot(s, hits, title, query_signal, plot, record)
        if json_out:
            emit_json({"query": json_title, "target": target, "k": k, "where": where or [], "hits": [h.as_dict() for h in hits]})
            return
        if not hits:
            if where:
                typer.echo(f"no records match {' and '.join(where)} in {store}", err=True)
            else:  # only target report can find nothing in a store that is not empty
                typer.echo(f"no record of {store} has a report text; index a dataset with reports (see --text-source)", err=True)
            return
        rows = [{"rank": h.rank, "id": h.id, "score": h.score, "labels": _label_str(h.labels), "report": h.text} for h in hits]
        emit(rows, False, title=f"{title} -> top {len(hits)} {target}s in {store}")


def _read_query_ecg(path: Path, fs: Optional[float], layout: Optional[str], unit: str):
    """A WFDB record or .mat (search.read_ecg_file), or a .npy read as the server reads an upload."""
    from etp_search.search import read_ecg_file

    if path.suffix.lower() != ".npy":
        if fs is not None or layout is not None:
            raise fail("--fs and --layout describe a NumPy --ecg X.npy; a WFDB or .mat file declares its own")
        return read_ecg_file(path)
    if fs is None or layout is None:
        raise fail(f"--ecg {path} is a NumPy array: give its sampling rate and layout, e.g. --fs 100 --layout 'samples x leads'")
    if not path.is_file():
        raise fail(f"ECG file {path} does not exist")
    from etp_search.serve.uploads import UploadedFile, UploadError, parse_upload, safe_name

    try:
        name = safe_name(path.name)
    except UploadError:  # only the server needs a plain name; any local name will do here
        name = "query.npy"
    return parse_upload([UploadedFile(name, path.read_bytes())], fs=fs, layout=layout, units=unit)


def _plot(searcher, hits, title: str, query_signal, out: Path, record: Optional[str]) -> None:
    """Re-read the hits' raw signals from the dataset the store was built from and draw them."""
    from etp_search.plotting import plot_query_results
    from etp_search.search import source_reader

    reader = source_reader(searcher.store.provenance, "--plot needs the folder the store was indexed from: re-index from it, or drop --plot")
    if record is not None:
        r = reader.read(str(record))
        query_signal = (r.signal, r.fs)
    panels = []
    for h in hits:
        r = reader.read(h.id)
        panels.append((r.signal, r.fs, f"{h.id}  score {h.score:.3f}  {_label_str(h.labels)}"))
    qsig, qfs = query_signal if query_signal is not None else (None, None)
    plot_query_results(qsig, title, panels, out, fs=qfs)
    typer.echo(f"plot written to {out}", err=True)
