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


def _print_version(value: bool) -> None:
    if value:
        from etp_search import __version__

        typer.echo(f"etp-search {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """ECG-text embeddings (ETP): prepare data, train, index, query, zero-shot, probe."""


def _register() -> None:
    from etp_search.cli import evaluate, index, info, prepare, query, serve, train

    app.command("info")(info.info)
    app.command("prepare")(prepare.prepare)
    app.command("train")(train.train)
    app.command("index")(index.index)
    app.command("query")(query.query)
    app.command("zeroshot")(evaluate.zeroshot)
    app.command("probe")(evaluate.probe)
    app.command("retrieval")(evaluate.retrieval)
    app.command("serve")(serve.serve)


def main() -> None:
    """Console entry point: usage mistakes (unknown option, missing argument, bad value) print one
    `error:` line naming the fix, like every other user error, instead of Click's usage box."""
    import sys

    from typer.exceptions import TyperException  # base of Typer's (vendored) Click exceptions

    _register()
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        where = ctx.command_path if ctx is not None else "etp-search"
        typer.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
