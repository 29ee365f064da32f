"""Reading and writing gzipped NIfTI files (.nii.gz, how BraTS ships) with ISA-L's gzip where it is installed.

Inflating and deflating are most of the cost of reading a BraTS patient and of writing a synthetic one. ISA-L
(`isal`, a pinned dependency of the pipeline; the API image does without it) produces and accepts standard gzip
streams: the voxels read are the same, and files it writes open in every NIfTI tool. Measured on 2 cores (one
patient's five files): reading in about 60 % of nibabel's time (0.11–0.17 s against 0.18–0.30 s, with the state of
the process's heap). Writing uses the standard library's zlib: ISA-L's deflate is not deterministic in a
long-lived process (the fetch step's pool workers wrote other bytes for the same voxels from one run to the next,
0–2 files of 240 per run, measured 2026-12-02), and a file's bytes are its identity for DVC and for the slice step's
fingerprints: every refetch then changed `data/raw`'s hash and retrained the model on the same voxels.
"""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import nibabel as nib

try:
    from isal import igzip as gzip_codec
except ImportError:  # an environment without the wheel reads the same format with the standard library
    gzip_codec = gzip

log = logging.getLogger(__name__)
# nibabel gives its logger a stderr handler of its own, so each of its warnings ("pixdim[1,2,3] should be non-zero")
# printed twice: raw, and again through the step's log handler. Through ours alone.
logging.getLogger("nibabel.global").handlers.clear()

# A single-file NIfTI's first four bytes, sizeof_hdr, say which version it is (in the file's byte order).
NIFTI_BY_HEADER_SIZE = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
COMPRESS_LEVEL = 1  # what nibabel writes .nii.gz with: the volumes are noisy, higher levels gain little
# The most voxels a volume may declare: a reader allocates what the header declares before it finds out whether the
# file holds it (a 73-byte .nii.gz declaring 1500x1500x700 float32 took 6.2 GB). BraTS's 240x240x155 is 8.9 M; 512^3
# (134 M, 0.5 GB as float32 in each slicing worker) leaves room for any brain MRI.
MAX_VOXELS = 512**3
INFLATE_CHUNK = 16 * 2**20  # bytes per read (a read allocates what it asks for): memory follows what the stream holds
# gzip checks its CRC and length only at the stream's end, which a reader that stops at the voxels never reaches: a
# flipped bit then changes voxels without a word (25 of 30 random flips in a BraTS-size file, 2026-12-07). So the
# stream is read on to its end, up to this many bytes after the voxels (a NIfTI file has none; a long tail is let be,
# as nibabel lets it be, rather than inflated whole).
MAX_TAIL = 64 * 2**20
TAIL_CHUNK = 2**20
# What gzip (and ISA-L) raise at a stream's end when its bytes are not what was written; bytes after the stream that
# are not gzip are another error, which nibabel accepts too.
DAMAGED_STREAM = ("CRC check failed", "Incorrect length of data produced")


def damaged_stream(exc: Exception) -> bool:
    """Whether gzip's error says the stream's bytes changed (DAMAGED_STREAM), not that something else followed it."""
    return any(sign in str(exc) for sign in DAMAGED_STREAM)


class DeclaredSizeError(ValueError):
    """A header that declares more voxels than MAX_VOXELS, or more bytes than its file holds: refused before the
    declared size is allocated."""


class DamagedStreamError(ValueError):
    """A gzip stream whose checksum or length does not match what it inflates to: bytes changed after it was written
    (nib.load, which never reads that far, would return the changed voxels)."""


def read_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """`nib.load(path)`, except that a single-file .nii.gz is inflated in bounded reads and parsed from memory, and
    that a header declaring more than MAX_VOXELS voxels, or more than its file holds, is refused first.

    Otherwise never stricter than nib.load: a file the fast path does not take as it is (a header it does not
    recognise, bytes after the gzip stream, a damaged stream) goes to nib.load, whose verdict and error stand."""
    if path.name.lower().endswith(".nii.gz"):
        try:
            return _read_single_file(path)
        except (DeclaredSizeError, DamagedStreamError):
            raise
        except Exception as exc:  # noqa: BLE001 (nib.load below decides, and reports, what this path did not take)
            log.debug("%s: read by nib.load (%s: %s)", path, type(exc).__name__, exc)
    image = nib.load(path)  # the header only: the voxels are read when asked for
    check_declared_voxels(image.header)
    return image


def check_declared_voxels(header) -> None:
    shape = header.get_data_shape()
    if (voxels := math.prod(shape)) > MAX_VOXELS:
        raise DeclaredSizeError(f"the header declares {voxels:,} voxels ({' x '.join(map(str, shape))}), more than "
                                f"the {MAX_VOXELS:,} a volume may have")


def _read_single_file(path: Path) -> nib.spatialimages.SpatialImage:
    """Header, extensions and the voxels the header declares, nothing after them: a small file with a long tail
    is not inflated whole (nibabel stops there too). The stream's checksum is checked all the same (MAX_TAIL)."""
    try:
        with gzip_codec.open(path, "rb") as stream:
            head = stream.read(540)
            image_class = next((NIFTI_BY_HEADER_SIZE[size] for size in (int.from_bytes(head[:4], "little"),
                                                                         int.from_bytes(head[:4], "big"))
                                if size in NIFTI_BY_HEADER_SIZE), None)
            if image_class is None:
                raise ValueError(f"{path.name}: not a single-file NIfTI header")
            header = image_class.header_class(head[:image_class.header_class.sizeof_hdr], check=False)
            check_declared_voxels(header)
            data_bytes = math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
            wanted = int(header.get_data_offset()) + data_bytes
            raw = head + _read_at_most(stream, wanted - len(head))
            if len(raw) == wanted:
                _read_on_to_the_end(stream)
    except (OSError, EOFError) as exc:  # gzip checks at the stream's end, wherever the read that reaches it stops
        if damaged_stream(exc):
            raise DamagedStreamError(f"the gzip stream is damaged ({exc}): its bytes changed after it was written; "
                                     "download or copy the file again") from exc
        raise
    if len(raw) < wanted:  # nib.load would allocate the declared size before saying the same
        raise DeclaredSizeError(f"the header declares {wanted:,} bytes, the file inflates to {len(raw):,}")
    return image_class.from_bytes(raw)


def _read_on_to_the_end(stream) -> None:
    """Reads on to the end of the gzip stream, at most MAX_TAIL bytes, so that gzip compares its checksum and length;
    bytes after the stream that are no gzip are left as nibabel leaves them."""
    try:
        for _ in range(MAX_TAIL // TAIL_CHUNK):
            if len(stream.read(TAIL_CHUNK)) < TAIL_CHUNK:
                return
    except (OSError, EOFError) as exc:
        if damaged_stream(exc):
            raise
        log.debug("bytes after the gzip stream left unread (%s: %s)", type(exc).__name__, exc)


def _read_at_most(stream, size: int) -> bytes:
    """Up to `size` bytes of `stream`, read in INFLATE_CHUNK pieces (one read of `size` allocates all of it)."""
    parts, left = [], size
    while left > 0 and (part := stream.read(min(INFLATE_CHUNK, left))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def write_nifti_gz(image: nib.Nifti1Image, path: Path) -> None:
    """`nib.save(image, path)` for a .nii.gz: the same NIfTI bytes, gzipped with a zero timestamp as nibabel does, so
    the same image always gives the same file (zlib, not ISA-L: see the module docstring)."""
    path.write_bytes(gzip.compress(image.to_bytes(), COMPRESS_LEVEL, mtime=0))
