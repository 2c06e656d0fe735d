"""The server's door, checked before any route runs: the Host header (DNS rebinding),
HTTP Basic credentials, and the size of a request's body.

Plain ASGI middleware, so every path is covered, unknown ones included.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 64 << 20  # a --server run's job list, or an image for png-info


def a1111_error(
    status: int, detail: str, error: str = "HTTPException", headers: dict | None = None
) -> JSONResponse:
    """An error in the shape A1111's API answers with."""
    body = {"error": error, "detail": detail, "body": "", "errors": f"{status}: {detail}"}
    return JSONResponse(body, status_code=status, headers=headers)


def own_names(host: str) -> set[str]:
    """The names a request may give in its Host header: the address the server listens
    on, localhost, and this machine's names. IP addresses are always allowed: a DNS
    rebinding attack needs a name of the attacker's."""
    names = {"localhost", host.lower()}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names |= {name.lower(), f"{name.lower()}.local"}
    return names


def host_allowed(header: str | None, names: set[str]) -> bool:
    if header is None:  # HTTP/1.0 without Host: not a browser
        return True
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:7860
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.rstrip(".") in names


def _origin_of(url: str) -> str:
    return url.strip().rstrip("/").lower()


def authorized(header: str | None, credentials: tuple[tuple[str, str], ...]) -> bool:
    """HTTP Basic credentials, each pair compared in constant time (every pair is
    compared, so the time does not tell which user exists)."""
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode(
            "utf-8"
        ).partition(":")  # fmt: skip
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 inside
        return False
    if not sep:
        return False
    matches = False
    for known_user, known_password in credentials:
        same = secrets.compare_digest(user.encode(), known_user.encode())
        same &= secrets.compare_digest(password.encode(), known_password.encode())
        matches |= same
    return matches


class Door:
    """Host check, then (with --api-auth) credentials, then the body's size."""

    def __init__(
        self,
        app: Callable,
        names: set[str],
        credentials: tuple[tuple[str, str], ...],
        origins: tuple[str, ...] = (),
    ) -> None:
        self.app, self.names, self.credentials = app, names, credentials
        self.origins = origins  # --cors-allow-origins

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> Any:
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host"), self.names):
            return a1111_error(400, "Invalid host header")
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if self.credentials and not preflight:
            header = headers.get("authorization")
            if not authorized(header, self.credentials):
                detail = "Incorrect username or password" if header else "Not authenticated"
                return a1111_error(401, detail, headers={"WWW-Authenticate": "Basic"})
        if not preflight and not self.from_allowed_page(headers):
            return a1111_error(403, "requests from other web pages are refused")
        length = headers.get("content-length")
        if scope["method"] in ("POST", "PUT", "PATCH") and length not in (None, "0"):
            kind = headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "application/json":
                return a1111_error(415, "send the body as application/json")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            if length is None:
                if "transfer-encoding" in headers:
                    return a1111_error(411, "send the body with a Content-Length")
            elif not length.isdigit():
                return a1111_error(400, "Content-Length is not a number")
            elif int(length) > MAX_BODY_BYTES:
                return a1111_error(413, f"the body is larger than {MAX_BODY_BYTES >> 20} MiB")
        return None

    def from_allowed_page(self, headers: Headers) -> bool:
        """A browser names the page a request comes from (Origin, Sec-Fetch-Site); a page
        of another site may drive the server only if --cors-allow-origins names it. A page
        may send a POST with no CORS preflight, so the missing CORS headers alone do not
        stop it. Programs (curl, A1111 clients, txt2img --server) send neither header."""
        origin = headers.get("origin")
        if origin is None:
            return headers.get("sec-fetch-site", "") != "cross-site"
        if _origin_of(origin) in {_origin_of(allowed) for allowed in self.origins}:
            return True
        own = f"//{headers.get('host', '')}".lower()
        return _origin_of(origin).endswith(own) and origin.lower().startswith("http")
