"""Uploaded NIfTI volumes → arrays, bounded before anything is allocated.

A NIfTI header states the volume's shape and data type, and nibabel allocates what the header says before it
finds the data short: a 62-byte .nii.gz that claims 1000×1000×500 float32 costs 1.9 GB. So the header is read
first (only its bytes are decompressed) and judged on its own: dimensions, `serve.max_voxels`, `serve.max_slices`,
the bytes it implies against `serve.max_volume_mb`, the affine the result will carry. Then the bytes it implies are
checked against what the upload really holds (the file's size, or for gzip of any number of members a counting
pass that inflates chunk by chunk and keeps nothing, checksums included): a header that lies is a 422 before any
memory is reserved or allocated for it. Only then are the voxels inflated into one buffer of the declared size. `VolumeHeader.memory_bytes`
is what the request reserves from the memory budget (serve/budget.py) for decoding and inference together.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from typing import BinaryIO

import nibabel as nib
import numpy as np

from serve.inflate import CHUNK, Inflater
from serve.uploads import GZIP_MAGIC, MB, MIN_SIDE, NIFTI1_MAGICS, NIFTI2_MAGIC, UploadError
from tasks.data.orientation import Orientation
from tasks.data.volumes import header_rank_fault, spacing_mm, voxel_size_conflict

HEADER_BYTES = {nib.Nifti1Image: 348, nib.Nifti2Image: 540}
# A voxel side an MRI volume can have, in mm: NIfTI-2's float64 sizes beyond these made the voxel volume overflow
# (1e103 mm a side: inf cm3, then NaN for an empty region) or vanish, and nothing sensible was left to report.
MIN_SPACING_MM, MAX_SPACING_MM = 1e-3, 1e3
MIN_MEMBER_BYTES = 4096  # allowed members: one per this many declared bytes (bgzip's hold about 64 KB each), + 2
# Bytes per voxel held while a volume is decoded and predicted, besides its raw data: the float32 volume, the
# z-scored copy, the foreground masks and the uint8 result mask. And per pixel of the model-sized slices: the
# (Z, C, S, S) input, the seg probabilities and the per-slice buffers. Measured on the quick model (peak RSS of a
# fresh process, 240×240×155 int16 to 256³ float32 and 8×8×512): the estimate with onnxruntime's workspace
# (serve/inference.py) was 1.3–1.8× the measured peak, never below it.
BYTES_PER_VOXEL = 12
BYTES_PER_MODEL_PIXEL = 24
# Per pixel of one native axial plane: each slice's probabilities are resized to the input grid and turned into a mask
# and an entropy there (tasks/inference/volume.to_volume_grid), about eight float32 temporaries of the plane's size.
# Nothing for a BraTS plane (2 MB at 240²), but a 4096² single-slice volume peaked 256 MB above its estimate without it.
BYTES_PER_PLANE_PIXEL = 40


@dataclass(frozen=True)
class VolumeImage:
    """What the answer needs of the upload besides its voxels: the header (spacing) and the affine."""

    image_class: type
    header: object
    affine: np.ndarray


@dataclass(frozen=True)
class VolumeHeader:
    name: str
    gzipped: bool
    image: VolumeImage
    shape: tuple[int, ...]  # (X, Y, Z), or (X, Y, Z, C) for a 4D upload holding the model's C modalities
    dtype: np.dtype
    data_offset: int

    @property
    def voxels(self) -> int:
        """Every stored value (all channels of a 4D upload)."""
        return math.prod(self.shape)  # Python ints: a forged NIfTI-2 shape must not wrap to a small or negative count

    @property
    def axial_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) in display orientation, Z the axial slices the volume is cut into (tasks/data/orientation.py:
        the affine says which stored axis that is). Needs an affine `_check_affine` passed."""
        return Orientation.of(self.image.affine).display_shape(self.shape[:3])

    @property
    def channels(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.dtype.itemsize

    @property
    def max_gzip_members(self) -> int:
        return 2 + (self.data_offset + self.data_bytes) // MIN_MEMBER_BYTES  # + bgzip's empty end-of-file member

    def memory_bytes(self, image_size: int, first: bool = True) -> int:
        """Memory for decoding this volume (each of its channels) and holding its slices at the model's
        `image_size`; the maps of the answer (serve.inference.volume_output_bytes) and onnxruntime's workspace
        (serve.inference.inference_bytes) come on top, once per request. A further modality of the same request
        (`first=False`) adds only what it keeps: its raw bytes, its float32 voxels and its prepared slices; its
        z-scored copy and masks are made after the first one's are gone (tasks/inference/volume.prepare_channels)."""
        model_pixels = self.axial_shape[2] * self.channels * image_size * image_size
        if not first:
            return self.data_bytes + 4 * self.voxels + 4 * model_pixels
        plane_pixels = self.axial_shape[0] * self.axial_shape[1]
        return (self.data_bytes + BYTES_PER_VOXEL * self.voxels + BYTES_PER_MODEL_PIXEL * model_pixels
                + BYTES_PER_PLANE_PIXEL * plane_pixels)


@dataclass
class VolumeUpload:
    """A probed upload: its judged header, and the stream positioned after the bytes read so far."""

    header: VolumeHeader
    stream: Inflater
    head: bytes  # the (decompressed) bytes already read: the header and perhaps the first voxels


def probe_volume(fileobj: BinaryIO, name: str, size_limit_mb: float, max_voxels: int, max_slices: int,
                 channels: int = 1) -> VolumeUpload:
    """Read and judge the header of an uploaded .nii / .nii.gz (a 4xx naming the problem), allocating nothing
    for its voxels yet. With `channels` > 1, a 4D (X, Y, Z, channels) upload is accepted too (one modality per
    channel); `max_voxels` applies per channel."""
    fileobj.seek(0, io.SEEK_END)
    size = fileobj.tell()
    fileobj.seek(0)
    if size > size_limit_mb * MB:
        raise UploadError(413, f"{name}: the volume is {size / MB:.1f} MB; the limit is {size_limit_mb:g} MB")
    if not size:
        raise UploadError(422, f"{name}: the file is empty")
    gzipped = fileobj.read(2) == GZIP_MAGIC
    fileobj.seek(0)
    stream = Inflater(fileobj, gzipped, name)
    head = stream.read(HEADER_BYTES[nib.Nifti2Image])
    if stream.in_member and stream.ended and len(head) < HEADER_BYTES[nib.Nifti1Image]:  # cut off mid-member
        raise UploadError(422, f"{name}: truncated gzip stream: it ends {len(head)} bytes into the data, before a "
                               "NIfTI header could be read")
    if head[4:8] == NIFTI2_MAGIC:
        image_class = nib.Nifti2Image
    elif head[344:348] in NIFTI1_MAGICS:
        image_class = nib.Nifti1Image
    else:
        raise UploadError(415, f"{name}: not a NIfTI volume (.nii or .nii.gz); slices go to /v1/predict")
    n = HEADER_BYTES[image_class]
    if fault := header_rank_fault(head[:n]):
        raise UploadError(422, f"{name}: {fault}")
    try:  # the bytes of the header alone, with "no extensions" after it: nothing is read beyond them
        header = image_class.header_class.from_fileobj(io.BytesIO(head[:n] + b"\0\0\0\0"))
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        affine = header.get_best_affine()
    except Exception as exc:  # nibabel raises many types for a damaged header
        raise UploadError(422, f"{name}: undecodable NIfTI header ({type(exc).__name__}: {exc})") from exc
    if offset < n:
        raise UploadError(422, f"{name}: the header puts the voxel data at byte {offset}, inside the header")
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if not (len(shape) == 3 or (len(shape) == 4 and channels > 1 and shape[3] == channels)):
        four_d = f", or one 4D (X, Y, Z, {channels}) volume of the model's modalities" if channels > 1 else ""
        what = (f"holds {shape[3]} volumes where the model takes {channels}" if len(shape) == 4 and channels > 1
                else f"has {len(shape)} dimensions")  # a 4D file of the wrong channel count: say that, not the rank
        raise UploadError(422, f"{name}: volume of shape {shape} {what}; expected one 3D (X, Y, Z) volume{four_d}")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise UploadError(422, f"{name}: voxels of type {dtype}; expected integers or floats")
    probe = VolumeHeader(name, gzipped, VolumeImage(image_class, header, affine), shape, dtype, offset)
    _check_affine(probe)  # before the axial axes are read from it
    axial = probe.axial_shape  # the slices are cut along the axial axis, whichever axis stores it
    if min(axial[:2]) < MIN_SIDE or axial[2] < 1:
        raise UploadError(422, f"{name}: volume of shape {shape} is too small (at least {MIN_SIDE}x{MIN_SIDE} "
                               "pixels per axial slice)")
    if probe.voxels // probe.channels > max_voxels:
        raise UploadError(413, f"{name}: {'x'.join(map(str, shape[:3]))} = {probe.voxels // probe.channels:,} voxels; "
                               f"the limit is {max_voxels:,} (serve.max_voxels)")
    if axial[2] > max_slices:
        raise UploadError(413, f"{name}: {axial[2]} axial slices; the limit is {max_slices} (serve.max_slices)")
    if offset > size_limit_mb * MB:  # no voxel data lies that far into a volume within the limit: a damaged header
        raise UploadError(422, f"{name}: the header puts the voxel data at byte {offset:,} (vox_offset), beyond "
                               f"the {size_limit_mb:g} MB a volume may have")
    if offset + probe.data_bytes > size_limit_mb * MB:
        raise UploadError(413, f"{name}: the header declares {probe.data_bytes / MB:.1f} MB of voxel data; the limit "
                               f"is {size_limit_mb:g} MB once decompressed")
    if not gzipped and size < offset + probe.data_bytes:
        raise short_data(probe, size)
    spacing = np.asarray(spacing_mm(header), dtype=np.float64)
    # nibabel's checked header reads a voxel size of 0 as 1 mm. Without an sform nothing else says how large a voxel
    # is (the qform is built from those sizes): the file's own 0 decides then. With one, the sform's spacing is checked
    # against that 1 mm below (voxel_size_conflict), as the slice step reads such a file.
    unchecked = image_class.header_class.from_fileobj(io.BytesIO(head[:n] + b"\0\0\0\0"), check=False)
    if int(header["sform_code"]) == 0 and (np.asarray(unchecked["pixdim"][1:4], dtype=np.float64) == 0).any():
        spacing = np.asarray(spacing_mm(unchecked), dtype=np.float64)
    if not (np.isfinite(spacing).all() and ((spacing >= MIN_SPACING_MM) & (spacing <= MAX_SPACING_MM)).all()):
        raise UploadError(422, f"{name}: invalid voxel spacing {spacing.tolist()} mm in the header (pixdim); the "
                               f"tumour volume needs voxel sizes from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm")
    if conflict := voxel_size_conflict(header, probe.image.affine):  # the cm³ would be off by their ratio
        raise UploadError(422, f"{name}: {conflict}")
    if gzipped:  # count what the stream really inflates to, keeping none of it: a lie costs CPU, never memory
        _count_inflated(fileobj, probe, size_limit_mb)
        fileobj.seek(0)
        stream = Inflater(fileobj, gzipped, name, probe.max_gzip_members)
        head = stream.read(len(head))
    return VolumeUpload(probe, stream, head)


def _count_inflated(fileobj: BinaryIO, probe: VolumeHeader, size_limit_mb: float) -> None:
    """Inflate the whole upload, keeping nothing: fewer bytes than the header declares is a 422, a corrupt or
    truncated member too (every member's checksum is checked), more than the limit a 413."""
    fileobj.seek(0)
    stream = Inflater(fileobj, True, probe.name, probe.max_gzip_members)
    need, got = probe.data_offset + probe.data_bytes, 0
    while got < need and (block := stream.read(min(CHUNK, need - got))):
        got += len(block)
    if got < need:
        raise short_data(probe, got)
    stream.drain(int(size_limit_mb * MB) - need)


def _check_affine(probe: VolumeHeader) -> None:
    """The result NIfTI carries the input's affine: one that is not finite or not invertible is refused now,
    before inference, not when the answer is written."""
    affine = probe.image.affine
    linear = affine[:3, :3]
    with np.errstate(over="ignore", invalid="ignore"):  # NIfTI-2's float64 entries can overflow the determinant
        determinant = abs(float(np.linalg.det(linear))) if np.isfinite(affine).all() else math.nan
    degenerate = not (1e-12 <= determinant < math.inf)
    if not degenerate:
        try:  # the slicing reads its axes from it; squares of entries near 1e155 overflow there
            with np.errstate(over="ignore", invalid="ignore"):
                Orientation.of(affine)
        except ValueError:
            degenerate = True
    if degenerate:
        # the whole 3x4 mapping: a NaN offset (qoffset, srow's last column) is what is wrong as often as the 3x3 part
        raise UploadError(422, f"{probe.name}: degenerate affine in the header (sform/qform: "
                               f"{np.array2string(affine[:3], precision=3).replace(chr(10), ' ')}); the voxel-to-world "
                               "mapping must be finite and invertible")
    try:
        nifti_bytes(np.zeros((1, 1, 1), np.uint8), probe.image)  # the writer accepts this header
    except Exception as exc:
        raise UploadError(422, f"{probe.name}: the header cannot be written back ({type(exc).__name__}: {exc})") from exc


def short_data(probe: VolumeHeader, got: int) -> UploadError:
    return UploadError(422, f"{probe.name}: undecodable NIfTI volume, truncated or forged: the header declares "
                            f"{probe.data_bytes:,} bytes of voxel data ({'x'.join(map(str, probe.shape))} "
                            f"{probe.dtype}), the file holds {max(got - probe.data_offset, 0):,}")


def read_volume(upload: VolumeUpload) -> tuple[np.ndarray, VolumeImage]:
    """The voxels the probed header declares → (X, Y, Z) float32 ((X, Y, Z, C) for a 4D upload) and what the answer
    needs of the header; a short stream is a 422, and nothing is allocated beyond the declared size."""
    probe, stream, head = upload.header, upload.stream, upload.head
    # The bytes between the header and vox_offset (extensions, or padding a forged header asks for) are read past,
    # never kept: only the voxels are held, which is what the memory budget reserves (VolumeHeader.memory_bytes).
    to_skip = probe.data_offset - len(head)
    while to_skip > 0 and (block := stream.read(min(CHUNK, to_skip))):
        to_skip -= len(block)
    if to_skip > 0:  # a plain file shorter than its header was refused by probe_volume; this is a race
        raise short_data(probe, probe.data_offset - to_skip)
    raw = bytearray(head[probe.data_offset:probe.data_offset + probe.data_bytes])  # grows only as the data arrives
    while len(raw) < probe.data_bytes and (block := stream.read(min(CHUNK, probe.data_bytes - len(raw)))):
        raw += block
    if len(raw) < probe.data_bytes:
        raise short_data(probe, probe.data_offset + len(raw))
    voxels = np.frombuffer(raw, dtype=probe.dtype, count=probe.voxels)
    volume = voxels.reshape(probe.shape, order="F").astype(np.float32)
    del voxels, raw
    try:
        slope, inter = probe.image.header.get_slope_inter()
    except Exception as exc:
        raise UploadError(422, f"{probe.name}: invalid intensity scaling in the header ({exc})") from exc
    with np.errstate(over="ignore", invalid="ignore"):
        if slope is not None and slope != 1:
            volume *= np.float32(slope)
        if inter:
            volume += np.float32(inter)
    if not np.isfinite(volume).all():  # as the slice step reads a volume (tasks/data/volumes.py load_volume)
        infinite = int(np.isinf(volume).sum())
        if infinite:  # it would pass as brain (> 0) and make every z-score NaN
            raise UploadError(422, f"{probe.name}: the volume holds {infinite:,} infinite values")
        np.nan_to_num(volume, copy=False, nan=0.0)  # NaN: outside the brain, as 0 is
    return volume, probe.image


def nifti_bytes(data: np.ndarray, like: VolumeImage) -> bytes:
    """`data` as a gzipped NIfTI with the affine and spacing of the uploaded image `like`."""
    header = like.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not rescale the mask
    header["cal_min"], header["cal_max"] = 0, 0  # the input's display window would hide a 0..4 label map
    header["intent_code"], header["descrip"] = 0, b"SliceWise prediction"
    out = like.image_class(data, like.affine, header)
    # qform and sform as the input has them: they may differ (scanner space vs a registered space), and a viewer
    # that reads the qform must place the overlay where it places the input
    qform, qform_code = like.header.get_qform(coded=True)
    sform, sform_code = like.header.get_sform(coded=True)
    if not (qform_code or sform_code):
        # Neither is set: every reader places the input by its own fallback (nifti1.h method 1: pixdim alone, no
        # flip, no centring; nibabel's differs). Codes written here would pin nibabel's fallback on the outputs, and a
        # viewer using method 1 would show them mirrored and shifted against the input: leave both unset as well.
        out.set_qform(None)
        out.set_sform(None)
        out.header.set_zooms(like.header.get_zooms()[:len(data.shape)])
        return gzip.compress(out.to_bytes(), compresslevel=6)
    out.set_qform(qform if qform is not None else like.affine, code=int(qform_code) or 1)
    out.set_sform(sform if sform is not None else like.affine, code=int(sform_code) or 1)
    return gzip.compress(out.to_bytes(), compresslevel=6)
