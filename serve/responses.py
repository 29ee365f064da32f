"""How the API answers: JSON written fast, FastAPI's validation errors as one sentence, and large answers paced
to the client's reading, so the memory they hold is released only once they are sent (serve/budget.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from serve.uploads import MB

log = logging.getLogger(__name__)


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence a person can act on."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if error.get("type") == "missing" and error.get("loc", ("",))[0] == "body":
            problems.append(f"missing multipart field '{where}' (send the upload as multipart/form-data)")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def json_response(content) -> Response:
    # Plain json.dumps: faster than FastAPI's encoder walk for answers holding long base64 strings.
    return Response(json.dumps(content, allow_nan=False), media_type="application/json")


SEND_CHUNK = 1 * MB


class PacedAnswer(StreamingResponse):
    """A finished response's body sent in pieces, `done` called once the last one is handed to the connection or
    the client has failed to read it all within `deadline` seconds (then the connection is dropped). Sent whole, the
    body would sit in the connection's write buffer after the handler returned, outside any budget; in pieces, each
    next piece waits until the client has read enough (uvicorn's flow control), so what `done` releases is truly
    sent, and a client that never reads holds it no longer than the deadline."""

    def __init__(self, response: Response, done: Callable[[], None], deadline: float):
        body = response.body

        async def pieces():
            for start in range(0, len(body), SEND_CHUNK):
                yield body[start:start + SEND_CHUNK]

        # the response's own headers (which model answered) go with it; its length is the body's
        headers = {key: value for key, value in response.headers.items() if key not in ("content-length",
                                                                                       "content-type")}
        super().__init__(pieces(), status_code=response.status_code, media_type=response.media_type,
                         headers=headers | {"content-length": str(len(body))})
        self.done, self.deadline = done, deadline

    async def __call__(self, scope, receive, send) -> None:
        try:
            await asyncio.wait_for(super().__call__(scope, receive, send), self.deadline)
        except TimeoutError:  # uvicorn closes a connection whose response the app left unfinished
            log.warning("a volume answer was not read within %g s (serve.answer_timeout_seconds); connection dropped",
                        self.deadline)
        finally:
            self.done()
