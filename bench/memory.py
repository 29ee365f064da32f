"""A process's memory as Linux reports it in /proc/<pid>/status, in MiB.

VmHWM is the peak RSS of the process's own address space. Not `resource.getrusage(...).ru_maxrss`: a spawned child is
forked before it executes Python afresh, and Linux carries the forked copy's high-water mark (the parent's whole RSS at
the fork) across the exec into ru_maxrss. Measured: a spawned child doing nothing reported 508 MiB of ru_maxrss when
its parent had imported torch, 14 MiB of VmHWM.
"""

from __future__ import annotations

from pathlib import Path


def status_mib(pid: int | str = "self", field: str = "VmHWM", missing: float = 0.0) -> float:
    """`field` (VmHWM: peak RSS, VmRSS: RSS now) of process `pid` in MiB; `missing` where /proc has no such process
    or field (no /proc, or a process that has exited but not yet been reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return missing
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return missing
