"""The `etp-search` command line: one module per verb, registered here.

Heavy libraries (torch, transformers, faiss) are imported inside the verbs so that `--help`
answers at once.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="etp-search",
    help="ECG-text embeddings (ETP): prepare data, train, index, query, zero-shot, probe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from etp_search.cli import evaluate, index, info, prepare, query, train

    app.command("info")(info.info)
    app.command("prepare")(prepare.prepare)
    app.command("train")(train.train)
    app.command("index")(index.index)
    app.command("query")(query.query)
    app.command("zeroshot")(evaluate.zeroshot)
    app.command("probe")(evaluate.probe)
    app.command("retrieval")(evaluate.retrieval)


def main() -> None:
    _register()
    app()
