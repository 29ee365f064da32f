"""multipart/form-data read as it streams in, with the limits applied on the way, not after parsing.

FastAPI's form parsing reads a whole request first: up to 1,000 file parts, each held in memory up to 1 MB, before
a route can count them. Here every upload route reads its body part by part: a file part beyond the route's count
is refused (413) when its headers arrive, a part beyond its size limit as soon as its bytes pass the limit, and each
file part is handed to the route when it ends, so the batch route decodes one file while the next streams in.
A part is spooled to a temporary file beyond SPOOL_BYTES, so the memory a request holds outside the memory budget
(serve/budget.py) stays about one megabyte, whatever its size.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import unquote

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from serve.uploads import MB, UploadError

SPOOL_BYTES = 1 * MB  # a part larger than this goes to a temporary file
MAX_HEADER_BYTES = 8 * 1024  # per part header line
MAX_OTHER_PARTS = 16  # form fields besides the upload(s): a client has no reason to send more
EXTENDED_FILENAME = re.compile(rb"filename\*\s*=\s*([A-Za-z0-9._-]*)'[^']*'([^;\s]+)", re.IGNORECASE)


@dataclass
class FilePart:
    """One uploaded file: its form field, the client's file name and the bytes (in memory or spooled to disk)."""

    field: str
    filename: str
    file: tempfile.SpooledTemporaryFile = field(repr=False)
    size: int = 0

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


def missing_field(name: str | tuple[str, ...]) -> UploadError:
    shown = name if isinstance(name, str) else "' or '".join(name)
    return UploadError(422, f"missing multipart field '{shown}' (send the upload as multipart/form-data)")


class _Reader:
    """The parser's callbacks: collects headers, counts parts, writes data, enforces the limits."""

    def __init__(self, field_name: str | tuple[str, ...], max_files: int, max_file_mb: float, what: str):
        self.max_files, self.max_file_mb, self.what = max_files, max_file_mb, what
        self.field_names = (field_name,) if isinstance(field_name, str) else tuple(field_name)
        self.shown = "', '".join(self.field_names)
        self.max_file_bytes = int(max_file_mb * MB)
        self.header_name = self.header_value = b""
        self.disposition = b""
        self.current: FilePart | None = None
        self.files = self.others = 0
        self.finished: list[FilePart] = []  # parts complete since the route last took them
        self.to_write: list[tuple[FilePart, bytes]] = []

    def on_part_begin(self) -> None:
        self.disposition, self.current = b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        # One of our fields is a file whatever its disposition says of a name: `filename*=UTF-8''...` alone (RFC
        # 5987, older urllib3), or no filename at all (curl -F 'file=<scan.png'); only other fields are skipped.
        if name not in self.field_names:
            if filename := _filename(options, self.disposition):  # a file the route would drop without a word
                raise UploadError(422, f"{filename}: sent as field '{name}', which this route does not take; send it "
                                       f"as '{self.shown}'")
            self.others += 1
            if self.others > MAX_OTHER_PARTS:
                raise UploadError(413, f"too many form fields besides '{self.shown}' (at most {MAX_OTHER_PARTS})")
            return
        self.files += 1
        if self.files > self.max_files:
            raise UploadError(413, f"too many files: more than {self.max_files}; at most {self.max_files} per "
                                   f"{self.what}")
        self.current = FilePart(name, _filename(options, self.disposition),
                                tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        if part is None:
            return  # a field we do not use: its bytes are not kept
        part.size += end - start
        if part.size > self.max_file_bytes:
            raise UploadError(413, f"{part.filename or part.field}: more than {self.max_file_mb:g} MB; "
                                   f"the limit is {self.max_file_mb:g} MB per file")
        self.to_write.append((part, data[start:end]))

    def on_part_end(self) -> None:
        if self.current is not None:
            self.finished.append(self.current)
        self.current = None


async def read_file_parts(request: Request, field_name: str | tuple[str, ...], max_files: int, max_file_mb: float,
                          what: str, on_file: Callable[[FilePart], Awaitable[None]] | None = None) -> list[FilePart]:
    """Stream the request's multipart body; each file part of `field_name` (or of any of several names) goes to
    `on_file` as soon as it is complete. Returns the parts (a 422 when there is none); the caller closes them
    (`close_parts`)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise missing_field(field_name)
    reader = _Reader(field_name, max_files, max_file_mb, what)
    callbacks = {name: getattr(reader, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    try:
        parser = MultipartParser(params[b"boundary"], callbacks, max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:  # python-multipart refuses a boundary it cannot use (over 256 bytes): the client's error
        raise UploadError(422, f"malformed multipart body ({exc})") from exc
    parts: list[FilePart] = []
    try:
        async for chunk in request.stream():
            _feed(parser, chunk)
            for part, data in reader.to_write:
                if part.file._rolled:  # on disk: write in a worker thread, as Starlette does
                    await run_in_threadpool(part.file.write, data)
                else:
                    part.file.write(data)
            reader.to_write.clear()
            finished, reader.finished = reader.finished, []
            for part in finished:
                parts.append(part)
                if on_file is not None:
                    await on_file(part)
        _feed(parser, None)
        if parser.state != MultipartState.END:  # python-multipart's finalize() accepts a body cut short
            cut = reader.current.filename or reader.current.field if reader.current else None
            raise UploadError(422, (f"{cut}: " if cut else "") + "upload truncated: the multipart body ends before "
                                   "its closing boundary, so files may be missing")
    except BaseException as exc:
        close_parts(parts + ([reader.current] if reader.current else []))
        if isinstance(exc, ClientDisconnect):
            raise UploadError(400, "the client closed the connection before the upload was complete") from exc
        raise
    if not parts:
        raise missing_field(field_name)
    return parts


def _feed(parser: MultipartParser, chunk: bytes | None) -> None:
    try:
        parser.finalize() if chunk is None else parser.write(chunk)
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        if "header size" in str(exc).lower():  # the part's name and file name are in the header it could not read
            raise UploadError(422, f"a part's header line is over {MAX_HEADER_BYTES // 1024} KB (a file name that "
                                   f"long?); shorten the file name ({exc})") from exc
        raise UploadError(422, f"malformed multipart body ({exc})") from exc


def close_parts(parts: list[FilePart]) -> None:
    for part in parts:
        part.file.close()


def _filename(options: dict[bytes, bytes], disposition: bytes) -> str:
    """A part's file name: `filename`, else RFC 5987's `filename*=charset''percent-encoded` (which
    parse_options_header drops), else ''."""
    if b"filename" in options:
        return options[b"filename"].decode("utf-8", "replace")
    extended = EXTENDED_FILENAME.search(disposition)
    if extended is None:
        return ""
    charset, quoted = extended.group(1).decode("latin-1"), extended.group(2).decode("latin-1")
    try:
        return unquote(quoted, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return unquote(quoted, errors="replace")
