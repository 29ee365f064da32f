"""Where the entry points' log records go (`python -m tasks`, `python -m flows`, `python -m serve`).

On a terminal, Rich's columns (time, level, message). Elsewhere (`make run > log`, CI, a service's log file) one
plain line per record: Rich wraps a non-terminal at 80 columns and pads every line to them, which cuts a record
into pieces a reader, or grep, has to put back together. What the commands print for a reader (`tasks summary`,
`tasks lineage`, the flow's table) goes through `report_console` for the same reason.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


# Off a terminal there is no window to fit: a table is drawn as wide as its cells, up to this many columns
REPORT_WIDTH = 1000


def report_console() -> Console:
    """A console for printed reports: Rich's own on a terminal; elsewhere one whose sentences stay one line each
    (no wrapping) and whose tables are as wide as their cells, not cut to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=REPORT_WIDTH, soft_wrap=True)


def log_handler(console: Console) -> logging.Handler:
    """The handler for `console`'s stream: Rich's on a terminal, plain lines elsewhere."""
    if console.is_terminal:
        return RichHandler(console=console, show_path=False)
    handler = logging.StreamHandler(console.file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    return handler
