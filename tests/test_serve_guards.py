"""Slow clients, too many connections, foreign hosts and origins, and the state-changing route (issue 13).

The deadlines and the connection cap live in uvicorn's protocol (serve/server.py), so those tests run the app
behind uvicorn, in a thread, with the options `python -m serve` uses, and talk raw HTTP over sockets.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.serve_factory import brain_slice, file_app, local_client, make_served_files, png_bytes, served_in_thread

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_served_files(tmp_path_factory.mktemp("guards"))


def cfg(**changes):
    from tasks.config import load_settings
    from tests.serve_factory import REPO

    return load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0, **changes})


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took (limit_s at most)."""
    started, data = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - started < limit_s:
        try:
            block = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not block:
            break
        data += block
    return data, time.monotonic() - started


# ---------------------------------------------------------------- finding 7: deadlines and a connection cap


@pytest.fixture(scope="module")
def strict_server(files):
    settings = cfg(header_timeout_seconds=1.0, body_timeout_seconds=1.5, max_connections=4, keep_alive_seconds=1.0)
    with served_in_thread(file_app(files), settings) as url:
        yield url


def trickle(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Send one byte every 0.2 s, as a slowloris client does, until the server answers or closes; returns what it
    sent back and after how long."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(b"x")
            answer = sock.recv(4096)
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return b"", time.monotonic() - started
        return answer, time.monotonic() - started
    return b"", limit_s


def test_headers_trickling_in_are_cut_off(strict_server):
    with connect(strict_server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer, elapsed = trickle(sock, 8)
    assert elapsed < 4, f"connection still open after {elapsed:.1f} s"
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""


def test_a_silent_connection_is_answered_408_and_closed(strict_server):
    with connect(strict_server) as sock:
        data, elapsed = read_until_closed(sock, 6)
    assert elapsed < 3 and data.startswith(b"HTTP/1.1 408") and b"headers did not arrive within 1 s" in data


def test_a_body_trickling_in_is_cut_off(strict_server):
    with connect(strict_server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        answer, elapsed = trickle(sock, 8)
    assert elapsed < 5, f"connection still open after {elapsed:.1f} s"
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""


def test_a_pipelined_request_whose_body_stops_is_cut_off(strict_server):
    """A second request sent in the same write as the first (HTTP/1.1 pipelining) is parsed from what is buffered
    once the first is answered, where no new byte arrives to start its body deadline: with a silent client it held
    the connection, and its slot, for good (found by a review, 2026-12-07)."""
    with connect(strict_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        data, elapsed = read_until_closed(sock, 8)
    assert data.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in data
    assert b"the request body did not arrive within 1.5 s" in data and elapsed < 5


def healthz_status(url: str) -> bytes:
    """The status line of GET /healthz on a fresh connection."""
    with connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer, _ = read_until_closed(sock, 5)
    return answer.split(b"\r\n", 1)[0]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has answered (a 408) or closed this connection, without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
    return True  # an answer, or the end of the stream


def test_connections_beyond_the_cap_get_503_until_idle_ones_are_closed(strict_server):
    idle: list[socket.socket] = []  # each holds a slot without sending a byte, until the 1 s header deadline
    try:
        # Until the server has taken all four, the next one is answered; on a machine slow enough that their deadline
        # passes first, new ones take the place of those it closed.
        deadline, status = time.monotonic() + 30, b""
        while not status.startswith(b"HTTP/1.1 503"):
            assert time.monotonic() < deadline, f"never refused beyond 4 connections: last {status!r}"
            for sock in [s for s in idle if closed_by_server(s)]:
                idle.remove(sock)
                sock.close()
            idle += [connect(strict_server) for _ in range(4 - len(idle))]
            time.sleep(0.05)
            status = healthz_status(strict_server)
        # The idle ones are closed at their header deadline: a slot is free again.
        deadline = time.monotonic() + 15
        while not status.startswith(b"HTTP/1.1 200"):
            assert time.monotonic() < deadline, f"still refused 15 s after the idle connections' deadline: {status!r}"
            time.sleep(0.1)
            status = healthz_status(strict_server)
        for sock in idle:  # freed by the server's header deadline, not by this side
            data, _ = read_until_closed(sock, 5)
            assert data.startswith(b"HTTP/1.1 408"), data[:100]
    finally:
        for sock in idle:
            sock.close()


def test_normal_requests_are_unaffected(strict_server):
    import requests

    session = requests.Session()
    session.trust_env = False
    for _ in range(3):  # keep-alive reuse within the idle timeout
        response = session.post(f"{strict_server}/v1/predict", files={"file": ("s.png", png_bytes(brain_slice()))},
                                timeout=30)
        assert response.status_code == 200 and response.json()["has_tumor"] is True


def filler_head(kb: int, path: bytes = b"/healthz", eol: bytes = b"\r\n") -> bytes:
    """A GET whose head is about `kb` KB: `kb` header lines of 1,000 bytes."""
    fillers = [b"X-Filler-%d: %s" % (i, b"a" * 1000) for i in range(kb)]
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *fillers]
    return eol.join(lines) + eol + eol


@pytest.mark.parametrize("how", ["whole", "in pieces", "pipelined"])
def test_a_request_head_over_16_kb_is_a_431_however_it_arrives(strict_server, how):
    """h11's own limit only holds a head that is incomplete in its buffer: 100 KB of headers sent at once, or
    pipelined behind a small request, passed it."""
    head = filler_head(20)
    with connect(strict_server) as sock:
        if how == "whole":
            sock.sendall(head)
        elif how == "pipelined":
            sock.sendall(filler_head(0) + head)
        else:  # 18 KB of a head that never ends, as it would trickle in; nothing sent after the answer
            for start in range(0, 18 * 1024, 2048):
                sock.sendall(head[start : start + 2048])
                time.sleep(0.02)
        answer, _ = read_until_closed(sock, 5)
    assert answer.count(b"HTTP/1.1 200 ") == (1 if how == "pipelined" else 0), answer[:300]
    assert b"HTTP/1.1 431 " in answer and b'"detail": "the request line and headers exceed 16 KB"' in answer


POST_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize("request_bytes", [POST_HEAD + b"Content-Length: -5\r\n\r\n",
                                           POST_HEAD + b"Transfer-Encoding: gzip\r\n\r\n", b"GARBAGE\r\n\r\n"])
def test_a_request_http_cannot_parse_is_a_json_400(strict_server, request_bytes):
    """Review 2026-12-07: uvicorn answered these `400 text/plain "Invalid HTTP request received."`; every error of
    the API is JSON with a `detail` (docs/CONTRACT.md)."""
    import json

    with connect(strict_server) as sock:
        sock.sendall(request_bytes)
        answer, _ = read_until_closed(sock, 5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer[:300]
    assert json.loads(body)["detail"].startswith("malformed HTTP request: ")


def test_heads_under_16_kb_add_up_to_nothing_on_a_kept_alive_connection(strict_server):
    """Each request's head is judged alone: 30 heads of about 1 KB on one connection (bare-LF line ends, which h11
    accepts, for half of them) are all answered."""
    with connect(strict_server) as sock:
        for i in range(30):
            sock.sendall(filler_head(1, eol=b"\n" if i % 2 else b"\r\n"))
            answer = b""
            while b'"status"' not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 "), (i, answer[:200])
        sock.sendall(filler_head(15))  # 15 KB: within the limit
        answer, _ = read_until_closed(sock, 2)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


# ---------------------------------------------------------------- finding 10: reload token, Host and Origin


def test_reload_requires_the_token_when_one_is_set(files):
    with local_client(file_app(files, token=TOKEN)) as client:
        assert client.post("/model/reload").status_code == 401
        wrong = client.post("/model/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "SLICEWISE_ADMIN_TOKEN" in wrong.json()["detail"]
        right = client.post("/model/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and right.json()["changed"] is False


def test_reload_token_comes_from_the_environment(files, monkeypatch):
    monkeypatch.setenv("SLICEWISE_ADMIN_TOKEN", TOKEN)
    with local_client(file_app(files)) as client:
        assert client.post("/model/reload").status_code == 401
        assert client.post("/model/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_without_a_token_reload_does_not_exist_beyond_localhost(files, monkeypatch):
    monkeypatch.delenv("SLICEWISE_ADMIN_TOKEN", raising=False)
    with local_client(file_app(files, bind_host="0.0.0.0"), base_url="http://127.0.0.1") as client:
        assert client.post("/model/reload").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_host_must_be_allowed_when_bound_beyond_localhost(files):
    app = file_app(files, bind_host="0.0.0.0", allowed_hosts=("mri.example.org",))
    with local_client(app, base_url="http://evil.example.com") as client:
        refused = client.get("/")
        assert refused.status_code == 400 and "serve.allowed_hosts" in refused.json()["detail"]
    for base in ("http://mri.example.org:8000", "http://127.0.0.1:8000", "http://localhost"):
        with local_client(app, base_url=base) as client:
            assert client.get("/").status_code == 200, base


def test_a_server_bound_to_all_interfaces_answers_on_its_addresses(files):
    """A Kubernetes probe names the pod's IP, which no config knows in advance; an address cannot be rebound, so a
    wildcard bind accepts any IP literal, while names still have to be listed, and a localhost bind stays strict."""
    wildcard = file_app(files, bind_host="0.0.0.0")
    for base in ("http://10.1.2.3:8000", "http://[fd00::5]:8000", "http://192.168.0.7"):
        with local_client(wildcard, base_url=base) as client:
            assert client.get("/healthz").status_code == 200, base
            assert client.head("/healthz").status_code == 200, base
    for base in ("http://attacker.example:8000", "http://10.1.2.3.nip.io:8000"):
        with local_client(wildcard, base_url=base) as client:
            assert client.get("/healthz").status_code == 400, base
    with local_client(file_app(files, bind_host="127.0.0.1"), base_url="http://10.1.2.3:8000") as client:
        assert client.get("/healthz").status_code == 400


def test_a_request_without_a_host_header_is_answered(files):
    """Review 2026-12-07: HAProxy's default health check (`option httpchk`) is HTTP/1.0 without a Host header; it was
    refused with "Host None is not served here", so such a balancer marked the server down. A browser always sends
    Host (and DNS rebinding needs a browser); a wrong Host is still refused."""
    import asyncio

    from serve.guards import HostOriginGuard

    def status_of(headers: list[tuple[bytes, bytes]]) -> int:
        sent = []

        async def app(scope, receive, send):
            sent.append(200)

        async def send(message):
            if message["type"] == "http.response.start":
                sent.append(message["status"])

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        guard = HostOriginGuard(app, bind_host="0.0.0.0", allowed_hosts=("mri.example.org",))
        scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": headers, "http_version": "1.0"}
        asyncio.run(guard(scope, receive, send))
        return sent[0]

    assert status_of([]) == 200
    assert status_of([(b"host", b"mri.example.org")]) == 200
    assert status_of([(b"host", b"attacker.example")]) == 400


def test_health_is_answered_on_the_event_loop_not_behind_busy_worker_threads(files):
    """Volume requests waiting for the memory budget hold worker threads; a liveness probe queued behind them would
    time out and get a busy server restarted. /healthz must be a coroutine (FastAPI runs a plain def in a thread)."""
    import inspect

    app = file_app(files)
    endpoint = next(route.endpoint for route in app.routes if getattr(route, "path", None) == "/healthz")
    assert inspect.iscoroutinefunction(endpoint)
    with local_client(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"


def test_cross_origin_posts_are_refused(files):
    upload = {"file": ("s.png", png_bytes(brain_slice()))}
    with local_client(file_app(files), base_url="http://127.0.0.1:8000") as client:
        foreign = client.post("/v1/predict", files=upload, headers={"Origin": "http://evil.example.com"})
        assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
        assert client.post("/v1/predict", files=upload, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Origin": "http://evil.example.com"}).status_code == 200
        # another program's page on another localhost port is another origin too
        other_port = client.post("/model/reload", headers={"Origin": "http://localhost:9999"})
        assert other_port.status_code == 403
        for malformed in ("http://[zz", "null", "http://"):  # refused with a reason, never a 500
            answer = client.post("/v1/predict", files=upload, headers={"Origin": malformed})
            assert answer.status_code == 403 and "cross-origin" in answer.json()["detail"], malformed
    allowed = file_app(files, allowed_hosts=("ui.example.org:443", "2001:db8::1"))  # a port in an entry is ignored
    with local_client(allowed, base_url="http://127.0.0.1:8000") as client:
        assert client.post("/v1/predict", files=upload, headers={"Origin": "https://ui.example.org"}).status_code == 200
    with local_client(allowed, base_url="http://[2001:db8::1]:8000") as client:  # a bare IPv6 entry stays whole
        assert client.get("/healthz").status_code == 200
    with local_client(allowed, base_url="http://2001:8000") as client:
        assert client.get("/healthz").status_code == 400


def test_a_localhost_server_refuses_foreign_host_names(files):
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 reaches a server bound to
    localhost, but its requests name attacker.example, and must not read the model's details or predict."""
    with local_client(file_app(files, bind_host="127.0.0.1"), base_url="http://attacker.example:8000") as client:
        refused = client.get("/model/info")
        assert refused.status_code == 400 and "serve.allowed_hosts" in refused.json()["detail"]
    for base in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        with local_client(file_app(files, bind_host="127.0.0.1"), base_url=base) as client:
            assert client.get("/model/info").status_code == 200, base


def test_answers_carry_security_headers_and_the_ui_its_content_security_policy(files):
    """nosniff and no framing by another site on every answer (refusals included); the UI's pages may run only the
    UI's own scripts (no inline ones, no other origin) and be framed by nobody; FastAPI's /docs keeps its CDN page."""
    with local_client(file_app(files, bind_host="127.0.0.1")) as client:
        answers = {path: client.get(path) for path in ("/", "/static/app.js", "/healthz", "/docs")}
        answers["refused"] = client.get("/healthz", headers={"host": "attacker.example"})
    assert answers["refused"].status_code == 400
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["x-frame-options"] == "DENY", name
    for name in ("/", "/static/app.js"):
        policy = answers[name].headers["content-security-policy"]
        assert "script-src" not in policy and "default-src 'self'" in policy, policy  # scripts: this origin only
        assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy
    assert "content-security-policy" not in answers["/healthz"].headers
    assert "content-security-policy" not in answers["/docs"].headers


def test_a_batch_sent_in_full_is_not_timed_out_while_the_server_decodes_it(files):
    """40 PNGs of 2048²: curl had handed the whole body to the socket at once, but the batch route decodes each file
    before it reads on, so the bytes waited in the socket buffers and the body deadline answered 408 "did not
    arrive". Time the server spends not reading is the server's, not the client's."""
    import numpy as np
    import requests

    rng = np.random.default_rng(0)
    pixels = np.clip(brain_slice(2048).astype(int) + rng.integers(0, 30, (2048, 2048)), 0, 255).astype(np.uint8)
    png = png_bytes(pixels)  # about 3 MB: the body is about 120 MB, decoded file by file
    with served_in_thread(file_app(files), cfg(body_timeout_seconds=1.0)) as url:
        started = time.monotonic()
        response = requests.post(url + "/v1/predict/batch", files=[("files", (f"s{i}.png", png)) for i in range(40)],
                                 timeout=120)
        took = time.monotonic() - started
    assert response.status_code == 200, response.text[:200]
    assert len(response.json()) == 40 and took > 1.0  # it did take longer than the body deadline


def test_the_page_answers_while_many_requests_wait_for_memory(files):
    """42 volume uploads waiting for the memory budget each held one of anyio's 40 worker threads: GET / took 14.6 s.
    The server has a thread for every request it lets in, and some over."""
    import threading

    import requests

    app = file_app(files)
    with served_in_thread(app, cfg(queue_seconds=20, max_connections=64)) as url:
        budget = app.state.budget
        held = budget.acquire(budget.total, "the test")  # every upload below waits for memory
        png = png_bytes(brain_slice(128))
        waiting = [threading.Thread(target=lambda: requests.post(url + "/v1/predict", files={"file": ("a.png", png)},
                                                                  timeout=60)) for _ in range(45)]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 10
        while len(budget._waiting) < 45 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(budget._waiting) == 45  # all parked, each in a worker thread
        started = time.monotonic()
        page = requests.get(url + "/", timeout=30)
        took = time.monotonic() - started
        budget.release(held)
        for thread in waiting:
            thread.join(60)
    assert page.status_code == 200 and took < 2, took
