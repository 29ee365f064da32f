"""Property test of the upload routes: whatever a client sends, the answer is never a 5xx.

Hypothesis generates raw bytes, bytes behind each accepted format's magic number, numpy arrays of any dtype and
shape (NaN, infinities, extremes included), images in every Pillow mode and NIfTI volumes of odd shapes; a
bounded number of examples keeps the suite fast.
"""

from __future__ import annotations

import io
import struct

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from serve.uploads import GZIP_MAGIC, JPEG_MAGIC, NPY_MAGIC, PNG_MAGIC
from tests.serve_factory import file_app, local_client, make_served_files, npy_bytes

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
PIXDIM_OFFSET, QFORM_CODE_OFFSET = 76, 252  # NIfTI-1 header layout
ROUTES = [("/v1/predict", "file"), ("/v1/predict/batch", "files"), ("/v1/predict/volume", "file")]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with local_client(file_app(make_served_files(tmp_path_factory.mktemp("fuzz")))) as client:
        yield client


def assert_no_server_error(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]


filenames = st.one_of(st.none(), st.text(max_size=40))


@FUZZ
@given(data=st.binary(max_size=4096), name=filenames, route=st.sampled_from(ROUTES))
def test_arbitrary_bytes(client, data, name, route):
    path, field = route
    assert_no_server_error(client.post(path, files={field: (name or "", data)}))


@FUZZ
@given(magic=st.sampled_from([PNG_MAGIC, JPEG_MAGIC, NPY_MAGIC, GZIP_MAGIC, b"\x5c\x01\x00\x00"]),
       tail=st.binary(max_size=2048), route=st.sampled_from(ROUTES))
def test_bytes_behind_a_magic_number(client, magic, tail, route):
    path, field = route
    assert_no_server_error(client.post(path, files={field: ("f", magic + tail)}))


numeric_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                           hnp.boolean_dtypes(), hnp.complex_number_dtypes())


@FUZZ
@given(array=hnp.arrays(numeric_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)),
       gradcam=st.sampled_from(["true", "false", "yes", "2", ""]))
def test_npy_arrays_of_any_dtype_and_shape(client, array, gradcam):
    response = client.post("/v1/predict", files={"file": ("a.npy", npy_bytes(array))}, params={"gradcam": gradcam})
    assert_no_server_error(response)


@st.composite
def images(draw):
    mode = draw(st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "CMYK"]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    if mode == "I;16":  # 16-bit grayscale PNG: raw intensities, as some MRI exports are
        image = Image.fromarray(draw(hnp.arrays(np.uint16, (height, width))))
    else:
        image = Image.fromarray(draw(hnp.arrays(np.uint8, (height, width, 3)))).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else draw(st.sampled_from(["PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@FUZZ
@given(data=images(), route=st.sampled_from(ROUTES[:2]))
def test_images_in_any_mode(client, data, route):
    path, field = route
    assert_no_server_error(client.post(path, files={field: ("image", data)}))


@FUZZ
@given(array=hnp.arrays(st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
                        hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=24)),
       zooms=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3),
       codes=st.tuples(st.integers(0, 4), st.integers(0, 4)))
def test_nifti_volumes_of_any_shape(client, array, zooms, codes):
    data = bytearray(nib.Nifti1Image(array, np.eye(4)).to_bytes())
    struct.pack_into("<3f", data, PIXDIM_OFFSET + 4, *zooms)  # voxel sizes as written, even nonsense ones
    struct.pack_into("<2h", data, QFORM_CODE_OFFSET, *codes)
    response = client.post("/v1/predict/volume", files={"file": ("v.nii", bytes(data))})
    assert_no_server_error(response)


def nifti2_bytes(affine: np.ndarray, zooms: tuple[float, float, float]) -> bytes:
    """A NIfTI-2 volume with this sform and these voxel sizes, as written: built from the header, as nibabel's image
    classes refuse to write some of them (no qform decomposes from a NaN)."""
    volume = np.random.default_rng(0).random((32, 32, 4), dtype=np.float32)
    header = nib.Nifti2Header()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(None, code=0)
    header.set_sform(affine, code=1)
    header.set_zooms(zooms)
    header["vox_offset"] = 544
    return header.binaryblock + bytes(4) + volume.tobytes(order="F")


@pytest.mark.parametrize("affine_scale, zoom", [(1.0, 1e103), (1e103, 1e103), (1e200, 1.0), (1e-200, 1.0),
                                                (1.0, 1e-200)])
def test_nifti2_float64_extremes_in_spacing_and_affine_are_a_clear_422(client, affine_scale, zoom):
    # NIfTI-2 stores pixdim and the affine as float64: finite sizes whose products overflow (1e103³ mm³ per voxel),
    # or an affine whose orientation cannot be read (squaring 1e200), were once answered with a 500
    data = nifti2_bytes(np.diag([affine_scale] * 3 + [1.0]), (zoom,) * 3)
    response = client.post("/v1/predict/volume", files={"file": ("v.nii", data)})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("v.nii: ")


@FUZZ
@given(exponents=st.lists(st.floats(-320, 308), min_size=4, max_size=4),
       shear=st.floats(allow_nan=True, allow_infinity=True))
def test_nifti2_volumes_with_any_float64_geometry(client, exponents, shear):
    affine = np.diag([*(10.0 ** e for e in exponents[:3]), 1.0])
    affine[0, 1] = shear
    zoom = 10.0 ** exponents[3]
    response = client.post("/v1/predict/volume", files={"file": ("v.nii", nifti2_bytes(affine, (zoom, 1.0, 1.0)))})
    assert_no_server_error(response)


def test_a_voxel_size_of_zero_is_refused_not_read_as_one_millimetre(client):
    """Review 2026-12-07: nibabel's checked header turns pixdim 0 into 1, so a volume of unknown voxel size was
    answered in cm³ of 1 mm voxels, and its output NIfTI files said 1 mm too."""
    header = nib.Nifti1Header()
    volume = np.random.default_rng(0).random((32, 32, 4), dtype=np.float32)
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(None, code=0)
    header["pixdim"][1:4] = 0
    header["vox_offset"] = 352
    response = client.post("/v1/predict/volume", files={"file": ("v.nii", header.binaryblock + bytes(4)
                                                                 + volume.tobytes(order="F"))})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("v.nii: invalid voxel spacing [0.0, 0.0, 0.0] mm")
    # with an sform, that transform says how large the voxels are (1 mm here, as the slice step reads the file too)
    header.set_sform(np.eye(4), code=1)
    header["pixdim"][1:4] = 0
    accepted = client.post("/v1/predict/volume", files={"file": ("v.nii", header.binaryblock + bytes(4)
                                                                 + volume.tobytes(order="F"))})
    assert accepted.status_code == 200 and accepted.json()["voxel_spacing_mm"] == [1.0, 1.0, 1.0], accepted.text


def test_a_sheared_volume_is_refused_with_the_volume_its_voxels_hold(client):
    """Review 2026-12-07: a shear keeps each axis' spacing (the column norms) but not the voxel's volume: the answer
    gave 54.14 cm³ for a 48.43 cm³ tumour."""
    volume = np.random.default_rng(0).random((32, 32, 4), dtype=np.float32)
    affine = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    header = nib.Nifti2Header()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(None, code=0)
    header.set_sform(affine, code=1)
    header.set_zooms(tuple(np.linalg.norm(affine[:3, :3], axis=0)))
    header["vox_offset"] = 544
    response = client.post("/v1/predict/volume", files={"file": ("v.nii", header.binaryblock + bytes(4)
                                                                 + volume.tobytes(order="F"))})
    assert response.status_code == 422, response.text
    assert "shears the voxels: each holds 1 mm³, not the 1.118 of its sides" in response.json()["detail"]
