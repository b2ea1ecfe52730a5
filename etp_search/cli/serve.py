"""`etp-search serve`: the store's search as an HTTP API and a web page (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from etp_search.cli.common import DEFAULT_STORE, fail, setup_logging, user_errors


@user_errors
def serve(
    store: Annotated[Path, typer.Option(help="Embedding store written by `etp-search index`.")] = DEFAULT_STORE,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token or --no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port, printed at start).")] = 8000,
    token: Annotated[Optional[str], typer.Option(help="Bearer token every API call must send (or env ETP_SERVE_TOKEN).", envvar="ETP_SERVE_TOKEN")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback address without a token, on purpose.")] = False,
    checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint for encoding queries; default: the store's.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: auto).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Threads for upload parsing, plots and zero-shot (default: the cores).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads (1 is fastest under concurrent load).")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Most concurrent searches encoded and searched in one batch (1: no batching).")] = 32,
    text_cache: Annotated[int, typer.Option(min=0, max=1_000_000, help="Query texts whose vectors are remembered (0: encode every text query).")] = 1024,
    lanes: Annotated[int, typer.Option(min=1, max=2, help="Compute threads: 2 runs uploads' ECG forward beside text and record searches; 1 runs every search on one.")] = 2,
    refresh: Annotated[float, typer.Option(min=0, help="Seconds between checks for rows `index` appended (0: never).")] = 2.0,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest request body (an upload) in MB.")] = 20.0,
    cors_origin: Annotated[Optional[list[str]], typer.Option(help="Origin allowed to call the API from another page (repeatable; default: none).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    """Serve search, records, plots and zero-shot over HTTP (API at /api/v1, docs at /docs, page at /)."""
    setup_logging(verbose)
    from etp_search.serve.security import LOOPBACK_NAMES, check_bind, is_loopback

    check_bind(host, token, no_auth)
    if not store.exists():
        raise fail(f"no embedding store at {store}; build one with `etp-search index DATA_DIR --store {store}`")
    try:
        import uvicorn

        from etp_search.serve.app import create_app
    except ImportError as exc:
        raise fail(f"serve needs the server extra ({exc.name} is missing): pip install 'etp-search[serve]'") from None
    from etp_search.serve.engine import Engine

    _check_port_free(host, port)  # before the model loads, so a taken port fails in a second, not ten
    engine = Engine(store, checkpoint=checkpoint, device=device, workers=workers, threads=threads, refresh_s=refresh,
                    max_batch=max_batch, text_cache=text_cache, lanes=lanes)
    # Open on loopback: only loopback Host names, so another site's page cannot reach it by DNS rebinding.
    hosts = LOOPBACK_NAMES if is_loopback(host) and not token else None
    app = create_app(engine, token=token, max_upload=int(max_upload_mb * 1024 * 1024), allowed_hosts=hosts,
                     cors_origins=tuple(cors_origin or ()))
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if verbose else "warning",
                            access_log=verbose, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    _announce_when_started(server, host, bool(token))
    try:
        server.run()
    finally:
        engine.close()
    if not server.started:
        raise fail(f"could not listen on {host}:{port}; pick another --port or stop the process using it")


def _check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port} ({exc.strerror.lower() if exc.strerror else exc}); "
                       "pick another --port, or stop the process using it") from None


def _announce_when_started(server, host: str, with_token: bool) -> None:
    """Print the URL (with the real port when --port 0) once uvicorn is listening."""
    import threading
    import time

    def watch() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            sock = server.servers[0].sockets[0] if server.servers and server.servers[0].sockets else None
            port = sock.getsockname()[1] if sock is not None else server.config.port
            shown = f"[{host}]" if ":" in host else host
            typer.echo(f"serving on http://{shown}:{port}/  (API: /api/v1, docs: /docs"
                       + (", token required" if with_token else "") + ")", err=True)

    threading.Thread(target=watch, daemon=True).start()
