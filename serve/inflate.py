"""An upload's bytes read through a bounded gzip inflater: a stream decompressed as it is read, member by member,
with a cap on the members and on what it takes in at once (serve/volumes.py reads NIfTI uploads through it)."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from serve.uploads import GZIP_MAGIC, MB, UploadError

CHUNK = 1 * MB  # read and inflate this much at a time
INFLATE_INPUT = 64 * 1024  # compressed bytes handed to zlib at once
HEADER_MEMBERS = 16  # gzip members allowed before the header is read and says how much data follows
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip format


class Inflater:
    """The upload's bytes, decompressed on the way when it is gzip (every member of a multi-member file).

    zlib gets the compressed bytes INFLATE_INPUT at a time and the position in them is an offset, so the end of a
    member copies at most that much (zlib's `unused_data`), whatever the member's size. A real .nii.gz has one member
    (bgzip writes one per 64 KB of data); more than `max_members` is a 422: thousands of empty members would
    otherwise cost seconds of CPU per MB while inflating nothing."""

    def __init__(self, fileobj: BinaryIO, gzipped: bool, name: str, max_members: int = HEADER_MEMBERS):
        self.fileobj, self.gzipped, self.name, self.max_members = fileobj, gzipped, name, max_members
        self.inflater = zlib.decompressobj(wbits=GZIP_WBITS)
        self.buffer, self.pos = b"", 0  # compressed bytes read; those before `pos` are inflated
        self.members = 0  # members inflated to their end
        self.input_done = False
        self.in_member = False  # inside a gzip member whose end has not been seen
        self.ended = False  # nothing more to read: end of input, or bytes after the last member that are no gzip

    def read(self, n: int) -> bytes:
        """Up to `n` bytes (fewer only at the end of the data)."""
        if not self.gzipped:
            return self.fileobj.read(n)
        out, wanted = [], n
        while wanted > 0 and not self.ended:
            if self.pos == len(self.buffer) and not self._refill():
                self.ended = True
                break
            piece = memoryview(self.buffer)[self.pos : self.pos + INFLATE_INPUT]
            try:
                data = self.inflater.decompress(piece, min(wanted, CHUNK))
            except zlib.error as exc:
                raise UploadError(422, f"{self.name}: undecodable gzip data ({exc})") from exc
            self.in_member = True
            if self.inflater.eof:  # the end of a member: another may follow (unconsumed_tail may be stale now)
                self.pos += len(piece) - len(self.inflater.unused_data)
                self._next_member()
            else:
                self.pos += len(piece) - len(self.inflater.unconsumed_tail)
            out.append(data)
            wanted -= len(data)
        return b"".join(out)

    def _next_member(self) -> None:
        self.members += 1
        self.inflater, self.in_member = zlib.decompressobj(wbits=GZIP_WBITS), False
        while len(self.buffer) - self.pos < len(GZIP_MAGIC) and self._refill():
            pass
        self.ended = not self.buffer.startswith(GZIP_MAGIC, self.pos)  # trailing bytes are ignored, as by gzip(1)
        if not self.ended and self.members >= self.max_members:
            raise UploadError(422, f"{self.name}: more than {self.max_members:,} gzip members for the data its header "
                                   "declares (a .nii.gz has one; bgzip writes one per 64 KB)")

    def _refill(self) -> bool:
        block = b"" if self.input_done else self.fileobj.read(CHUNK)
        self.input_done = not block
        if block:
            self.buffer, self.pos = self.buffer[self.pos :] + block, 0
        return bool(block)

    def drain(self, limit: int) -> None:
        """Inflate the rest without keeping it, so that each member's checksum is checked: a corrupt or truncated
        stream is a 422, more than `limit` further bytes a 413."""
        if not self.gzipped:
            return
        left = limit
        while block := self.read(min(CHUNK, max(left, 0) + 1)):
            left -= len(block)
            if left < 0:
                raise UploadError(413, f"{self.name}: more data than the header declares, beyond the limit once "
                                       "decompressed")
        if self.in_member:
            raise UploadError(422, f"{self.name}: truncated gzip data")
