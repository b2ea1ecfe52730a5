"""Safe defaults of `etp-search serve`: loopback bind, bearer token, request-size limit, host check.

The guard is a plain ASGI middleware in front of everything, so a request without the token or
with an oversized body is refused *before* any of its body is read or parsed.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any, Awaitable, Callable

from etp_search.errors import EtpError

logger = logging.getLogger(__name__)

#: Default cap on one request's body (an upload is one ECG: a 60 s 500 Hz 12-lead record is ~1.4 MB).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to serve a non-loopback address without a token unless --no-auth says so explicitly."""
    if token is not None and not token.strip():
        raise EtpError("--token is empty; pass a long random string, e.g. --token \"$(openssl rand -hex 16)\"")
    if token and no_auth:
        raise EtpError("--token and --no-auth contradict each other; pass one of them")
    if not is_loopback(host) and not token and not no_auth:
        raise EtpError(f"--host {host} makes the server reachable from other machines; protect it with "
                       "--token SECRET (clients send 'Authorization: Bearer SECRET'), or pass --no-auth to serve "
                       "it open on purpose")


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """One-line JSON error body, sent straight from ASGI (no app involved)."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Token, body size and Host checks for every ``/api/`` request (the page and docs stay readable).

    Args:
        app: The ASGI app to guard.
        token: Bearer token required on API calls, or None for none.
        max_body: Largest request body in bytes (checked on Content-Length and while streaming).
        allowed_hosts: Host header names accepted (None: any). A loopback server without a token
            accepts only loopback names, so a web page on another site cannot reach it through DNS
            rebinding.
    """

    def __init__(self, app: Any, token: str | None = None, max_body: int = MAX_UPLOAD_BYTES,
                 allowed_hosts: tuple[str, ...] | None = None, api_prefix: str = "/api/"):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = int(max_body)
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.api_prefix = api_prefix

    def _host_ok(self, headers: dict[bytes, bytes]) -> bool:
        if self.allowed_hosts is None:
            return True
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in self.allowed_hosts

    def _token_ok(self, headers: dict[bytes, bytes]) -> bool:
        if self.token is None:
            return True
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not self._host_ok(headers):
            await send_json_error(send, 400, "this server answers only to localhost / 127.0.0.1; open it by that "
                                             "address (or start it with --host and --token)")
            return
        if not scope["path"].startswith(self.api_prefix):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":  # CORS preflight carries no token; CORSMiddleware answers it
            await self.app(scope, receive, send)
            return
        if not self._token_ok(headers):
            await send_json_error(send, 401, "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' "
                                             "with the token the server was started with",
                                  {"www-authenticate": "Bearer"})
            return
        length = headers.get(b"content-length")
        too_big = (f"request body over {self.max_body // (1024 * 1024)} MB; upload one ECG record "
                   "(a .hea with its .dat or .mat, a .mat, or a .npy)")
        try:
            if length is not None and int(length) > self.max_body:
                await send_json_error(send, 413, too_big)
                return
        except ValueError:
            await send_json_error(send, 400, "bad Content-Length header")
            return
        await self._limited(scope, receive, send, too_big)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, too_big: str) -> None:
        """Count streamed body bytes (chunked uploads have no Content-Length) and stop at the cap."""
        seen = 0
        state = {"started": False, "refused": False}

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body and not state["refused"]:
                    state["refused"] = True
                    if not state["started"]:
                        await send_json_error(send, 413, too_big)
                    return {"type": "http.disconnect"}  # the app stops reading; nothing it sends goes out
            return message

        async def guarded_send(message: dict) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise
            logger.info("refused an oversized request body to %s", scope["path"])  # the app saw a disconnect
