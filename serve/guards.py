"""What stands between a request and the routes: body size, Host and Origin, and the token of state-changing routes.

- `BodySizeLimit` refuses a body larger than its route allows before it is parsed or spooled (413).
- `HostOriginGuard`: a request must name localhost, the bind address or one of `serve.allowed_hosts` in its Host
  header (400), against DNS rebinding: a page on attacker.example whose name resolves to 127.0.0.1 reaches a
  localhost-bound server too, but its requests name attacker.example. On a wildcard bind (0.0.0.0, ::) a Host that
  is an IP address is accepted too: rebinding needs a name, and a browser that sends an address reached the server
  by that address (a Kubernetes probe sends the pod's IP). A state-changing request (POST) from a web page
  must come from the page the API serves itself (Origin = the Host it was sent to) or from one of
  `serve.allowed_hosts` (403), so another site, or another program's page on another localhost port, cannot make a
  visitor's browser post to the API.
- `SecurityHeaders`: every answer says `nosniff` and may not be framed by another site (clickjacking); the web UI's
  pages also carry a Content-Security-Policy that lets them run only the UI's own scripts and reach only this server.
- `admin_router`: `POST /model/reload` and any later state-changing route. With `SLICEWISE_ADMIN_TOKEN` set they
  require `Authorization: Bearer <token>` (401); without it they exist only on a server bound to localhost.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from serve.uploads import MB

ADMIN_TOKEN_ENV = "SLICEWISE_ADMIN_TOKEN"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def hostname(value: str) -> str | None:
    """'Example.org:8000' → 'example.org', '[::1]:8000' → '::1'; None when it is no host."""
    try:
        return urlsplit(f"//{value}").hostname
    except ValueError:
        return None


def _host_entry(entry: str) -> str:
    """An `allowed_hosts` entry as a host name: 'mri.example.org:443' → 'mri.example.org', '[::1]:8000' → '::1';
    a bare IPv6 address ('2001:db8::1') stays whole (its colons are no port)."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        return entry
    return hostname(entry) or entry.strip("[]")


def origin_netloc(origin: str) -> str | None:
    """'http://Example.org:8000' → 'example.org:8000' (what a Host header of the same origin says); None for 'null',
    a malformed origin or one without a host."""
    try:
        parts = urlsplit(origin)
        return parts.netloc.lower() if parts.scheme and parts.hostname else None
    except ValueError:
        return None


def too_large(size: int, limit: int, takes: str | None = None) -> str:
    """The 413 answer's words. `takes`: what the route takes, in its settings' terms (its limit adds the form's
    overhead to them, so the body's limit alone read "11.0 MB exceeds this route's limit of 11.0 MB" of a 10 MB
    rule)."""
    if takes:
        return f"request body of {size / MB:.2f} MB is more than this route takes: {takes}"
    return f"request body of {size / MB:.2f} MB exceeds this route's limit of {limit / MB:.2f} MB"


class BodySizeLimit:
    """ASGI middleware: refuse a request body larger than its route allows before it is parsed or spooled.

    Content-Length is checked up front; the bytes actually received are counted too (chunked uploads, or a
    client that lies), and FastAPI turns the HTTPException raised while reading into the 413 answer.
    """

    def __init__(self, app, limits: dict[str, tuple[int, str | None]], default: int):
        self.app = app
        self.limits = limits  # route → (bytes, what it takes, said in a refusal)
        self.default = default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"].rstrip("/") or "/"
        limit, takes = self.limits.get(route, (self.default, None))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": too_large(int(declared), limit, takes)}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large(received, limit, takes))
            return message

        await self.app(scope, counting_receive, send)


# The UI loads its scripts and styles from /static, draws the API's base64 PNGs (data:) and the CSV it builds (blob:),
# and sets colours in style attributes (the legend): nothing else, so nothing else is allowed. Not on FastAPI's /docs,
# whose page is an inline script over a CDN's Swagger UI.
UI_CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                              "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))


def is_ui_path(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every answer, and the UI's Content-Security-Policy on its pages."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = list(SECURITY_HEADERS)
        if is_ui_path(scope["path"]):
            extra.append((b"content-security-policy", UI_CONTENT_SECURITY_POLICY.encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                   *((k, v) for k, v in extra if k not in present)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostOriginGuard:
    """ASGI middleware: the Host check of every request and the Origin check of POSTs (`serve.allowed_hosts: ['*']`
    turns both off)."""

    def __init__(self, app, bind_host: str, allowed_hosts: tuple[str, ...]):
        self.app = app
        # pages elsewhere that may post; an entry written with a port ("mri.example.org:443") names its host
        self.origin_hosts = {_host_entry(h) for h in allowed_hosts}
        self.any_host = "*" in self.origin_hosts
        self.wildcard_bind = bind_host in ("", "0.0.0.0", "::")
        self.allowed = (self.origin_hosts | LOOPBACK_NAMES
                        | (set() if self.wildcard_bind else {bind_host.lower().strip("[]")}))

    def _serves(self, host: str | None) -> bool:
        # On a wildcard bind the server answers on every address it has; which ones it has can change (a pod's IP),
        # so any address literal is taken: only a name can be rebound to another address.
        return host in self.allowed or (self.wildcard_bind and host is not None and is_ip_address(host))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.any_host:
            headers = dict(scope.get("headers") or [])
            host_header = headers.get(b"host", b"").decode("latin-1")
            host = hostname(host_header)
            # no Host at all: an HTTP/1.0 request (a load balancer's health check), never a browser, whose requests
            # always name one; rebinding, which this check stops, needs a browser
            if host_header and not self._serves(host):
                return await self._refuse(400, f"Host {host!r} is not served here: add it to serve.allowed_hosts",
                                          scope, receive, send)
            origin = headers.get(b"origin")
            if origin is not None and scope["method"] not in SAFE_METHODS:
                netloc = origin_netloc(origin.decode("latin-1"))
                same_origin = netloc is not None and netloc == host_header.lower()
                if not same_origin and (netloc is None or hostname(netloc) not in self.origin_hosts):
                    return await self._refuse(403, f"cross-origin request from {origin.decode('latin-1')!r} refused: "
                                                   "add its host to serve.allowed_hosts", scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(status: int, detail: str, scope, receive, send):
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def admin_token() -> str | None:
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def admin_router(token: str | None, bind_host: str) -> APIRouter | None:
    """The router for state-changing routes: token-protected when a token is set, open on a localhost-only server,
    and None (the routes do not exist) on a server reachable from elsewhere without a token."""
    if token is None and not is_loopback(bind_host):
        return None

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, f"this route needs 'Authorization: Bearer <token>' with the token in "
                                     f"{ADMIN_TOKEN_ENV}", headers={"WWW-Authenticate": "Bearer"})

    return APIRouter(dependencies=[Depends(check_token)])
