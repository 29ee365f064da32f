"""Content hashes of raw files that survive between runs, so an unchanged file is recognised by its stat alone.

Slicing fingerprints each patient by the content of its files (tasks/data/slicing.py). Hashing 369 BraTS
patients' volumes (4 GB as .nii.gz, 30 GB as .nii) on every run would cost more than slicing the one new
patient, so, like git's index and DVC's state database, the last digest of each file is kept with the file's
size, mtime, inode and ctime, and reused while all four are unchanged. The ctime is what no user can set: a file
rewritten in place to the same size with its mtime put back (`cp --preserve=timestamps` onto it, `rsync -t
--inplace`, `touch -r`) keeps size, mtime and inode, but not its ctime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.io import write_text_atomic


class FileDigests:
    """sha1 of raw files, re-read only when a file's size, mtime, inode or ctime differ from the last run.

    Kept in a small JSON file beside the output folder, never inside it: times are not data, and a DVC output
    must stay byte-identical for unchanged inputs. A file whose stat changed (DVC re-linked it from its cache, a
    re-fetch hard-linked it again, a chmod) is hashed once more, so the fingerprint still says what the content is.
    A record from before ctimes were kept has three stat fields: its files are hashed once more.
    """

    def __init__(self, path: Path):
        self.path, self.hashed = path, 0
        try:
            self._known = json.loads(path.read_text())
        except (OSError, ValueError):
            self._known = {}
        self._seen: dict[str, list] = {}

    def sha1(self, file: Path) -> str:
        stat, key = file.stat(), str(file.resolve())
        fresh = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
        known = self._seen.get(key) or self._known.get(key)  # seen: hashed (or recognised) earlier in this run
        if known is None or known[:-1] != fresh:
            with file.open("rb") as fh:
                known = [*fresh, hashlib.file_digest(fh, "sha1").hexdigest()]
            self.hashed += 1
        self._seen[key] = known
        return known[-1]

    def save(self) -> None:
        """Keep the files seen in this run only, so the record never outgrows the raw folder."""
        write_text_atomic(json.dumps(self._seen, sort_keys=True), self.path)


def digest_record(out_dir: Path) -> Path:
    """Where slicing records raw-file stats and digests for out_dir: beside it (data/.processed.digests.json)."""
    return out_dir.parent / f".{out_dir.name}.digests.json"
