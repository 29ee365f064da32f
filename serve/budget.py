"""A memory budget shared by the requests in flight: each reserves what its upload will cost before allocating it.

An upload's cost is known from its header before anything is decoded (image side × side, NIfTI dims × dtype);
a request reserves that many bytes for as long as it holds the arrays, waits its turn when the budget is taken
(at most `serve.queue_seconds`, then 503), and is refused outright (413) when it alone would exceed the budget.
So however many uploads arrive at once, and whatever their headers claim, the arrays of the requests in flight
never add up to more than `serve.memory_budget_mb`. Waiting requests are served in arrival order: a large one is
not overtaken by the small ones that arrive after it (under steady small traffic a volume waited 31 s, then 503).
A request that already holds part of the budget and asks for more (a batch, file by file) does not queue: behind a
request waiting for the memory it holds, neither could go on.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Iterator

from serve.uploads import MB, UploadError


class MemoryBudget:
    def __init__(self, total_bytes: int, wait_seconds: float):
        self.total = int(total_bytes)
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self.peak = 0  # the most ever reserved at once (tests and benchmarks read it)
        self._free = threading.Condition()
        self._waiting: deque[object] = deque()  # one ticket per request waiting, in arrival order

    def acquire(self, nbytes: int, what: str, holding: bool = False) -> int:
        """Take `nbytes` of the budget (413 when more than the whole budget, 503 after waiting `wait_seconds` in
        vain) until `release`; returns what was taken. For memory that outlives one block: an answer being sent.
        `holding`: the request already holds part of the budget, so it waits for room but not in the line."""
        nbytes = max(int(nbytes), 0)
        if nbytes > self.total:
            raise UploadError(413, f"{what}: processing it needs about {nbytes / MB:.0f} MB of memory; this server "
                                   f"allows {self.total / MB:.0f} MB for all requests in flight (serve.memory_budget_mb)")
        if nbytes == 0:
            return 0
        with self._free:
            ticket = None if holding else object()
            if ticket is not None:
                self._waiting.append(ticket)
            try:
                if not self._free.wait_for(lambda: (ticket is None or self._waiting[0] is ticket)
                                           and self.in_use + nbytes <= self.total, timeout=self.wait_seconds):
                    raise UploadError(503, f"{what}: the server is busy with other uploads; try again in a moment")
                self.in_use += nbytes
                self.peak = max(self.peak, self.in_use)
            finally:  # served or given up: the next in line may go
                if ticket is not None:
                    self._waiting.remove(ticket)
                    self._free.notify_all()
        return nbytes

    def release(self, nbytes: int) -> None:
        with self._free:
            self.in_use -= max(int(nbytes), 0)
            self._free.notify_all()

    @contextmanager
    def reserve(self, nbytes: int, what: str, holding: bool = False) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block (`acquire`'s errors and `holding`)."""
        held = self.acquire(nbytes, what, holding)
        try:
            yield
        finally:
            self.release(held)
