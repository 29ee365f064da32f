"""Every route of the API through FastAPI's TestClient, over a transparent ONNX model whose right answers are
known (bright regions are 'tumour', see tests/serve_factory.py), and every kind of bad input as a 4xx."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from fastapi.testclient import TestClient

from tasks.io import sha256_file
from tests.serve_factory import (SIZE, ServedFiles, brain_slice, brain_volume, decode_png, export_regions_onnx,
    export_tiny_onnx, file_app, jpeg_bytes, local_client, make_served_files, nifti_bytes, npy_bytes, png_bytes,
    write_metrics)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_served_files(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def client(files):
    with local_client(file_app(files)) as client:
        yield client


def predict(client, data: bytes, name: str = "slice.png", **params):
    return client.post("/v1/predict", files={"file": (name, data)}, params=params)


# ---------------------------------------------------------------- routes


def test_healthz_says_what_is_served(client, files):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["detail"] == f"serving file {files.onnx.name}"  # by its name: the server's path is no client's
    head = client.head("/healthz")  # a load balancer's health check
    assert head.status_code == 200 and head.content == b""


def test_model_info_shows_metrics_threshold_and_lineage(client, files):
    info = client.get("/model/info").json()
    assert info["source"] == "file" and info["name"] == files.onnx.name
    assert info["metrics"]["classification"]["accuracy"] == pytest.approx(0.91)
    assert info["served"]["image_size"] == SIZE and info["served"]["threshold"] == 0.5
    assert info["tags"]["onnx_sha256"] == sha256_file(files.onnx)  # the file served, not any 64 characters


@pytest.mark.parametrize("encode", [png_bytes, jpeg_bytes, lambda a: npy_bytes(a.astype(np.float32) * 7)],
                         ids=["png", "jpeg", "npy"])
def test_predict_finds_the_bright_disc_in_every_format(client, encode):
    body = predict(client, encode(brain_slice(tumour=True))).json()
    assert body["has_tumor"] is True and body["tumor_probability"] > 0.9
    mask = decode_png(body["mask_png"])
    # the PNGs are on the model's grid; the area counts the upload's pixels (64 x 64 here: 4 per model pixel)
    assert mask.shape == (SIZE, SIZE) and body["tumor_area_px"] == int((mask > 127).sum()) * (64 // SIZE) ** 2 > 0
    assert decode_png(body["image_png"]).shape == (SIZE, SIZE)
    assert body["ood_score"] < 0.5 and body["warning"] is None
    assert "gradcam_png" not in body


def photo_client(folder, photo_accuracy: float | None, ci95: list[float] | None = None, **serve_overrides):
    """A client of the tiny model whose metrics.json records `photo_accuracy` on 20 test photos (None: none), with
    its interval `ci95`."""
    metrics = write_metrics(folder / "metrics.json", photo_accuracy=photo_accuracy)
    if ci95:
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {
            "ci95": {"classification_by_source.kaggle.accuracy": ci95}}))
    files = ServedFiles(export_tiny_onnx(folder / "model.onnx"), folder / "none.pt", metrics)
    return local_client(file_app(files, **serve_overrides))


def test_a_photo_gets_no_decision_from_a_model_whose_test_photos_scored_below_the_bar(tmp_path):
    """The quick model decides BraTS slices at about 0.97 and photos near 0.6: a yes or no on a photo read as a
    finding it is not. Below serve.min_photo_accuracy (0.85) a photo's decision is withheld, with the figures; the
    same slice as NPY (raw intensities, as the MRI slices were scored) is still decided."""
    with photo_client(tmp_path, 0.6, ci95=[0.42, 0.78]) as client:
        photo = predict(client, png_bytes(brain_slice(tumour=True))).json()
        assert photo["has_tumor"] is None and photo["withheld"] == "photo_accuracy"
        assert photo["tumor_probability"] > 0.9 and photo["tumor_area_px"] > 0  # shown, not decided
        assert "accuracy on its 20 test photos is 0.600 (95 % interval 0.42-0.78)" in photo["warning"]
        assert "below serve.min_photo_accuracy 0.85" in photo["warning"]
        array = predict(client, npy_bytes(brain_slice(tumour=True).astype(np.float32) * 7), "slice.npy").json()
        assert array["has_tumor"] is True and array["withheld"] is None and array["warning"] is None
        rows = client.post("/v1/predict/batch", files=[
            ("files", ("a.jpg", jpeg_bytes(brain_slice(tumour=False)))),
            ("files", ("b.npy", npy_bytes(brain_slice(tumour=False).astype(np.float32) * 7)))]).json()
        assert [(r["has_tumor"], r["withheld"]) for r in rows] == [(None, "photo_accuracy"), (False, None)]
        info = client.get("/model/info").json()["photo_decisions"]
        assert info == {"given": False, "reason": photo["warning"], "min_accuracy": 0.85, "test_accuracy": 0.6,
                        "test_photos": 20, "ci95": [0.42, 0.78]}


def test_photo_decisions_follow_the_bar_and_a_model_never_tested_on_photos(tmp_path):
    """At or above the bar a photo is decided; with no test photo at all it is not (nothing says how the model
    fares on them); `min_photo_accuracy: null` decides every photo, as before the rule."""
    png = png_bytes(brain_slice(tumour=True))
    with photo_client(tmp_path / "good", 0.85) as client:
        assert predict(client, png).json()["has_tumor"] is True
        assert client.get("/model/info").json()["photo_decisions"]["given"] is True
    with photo_client(tmp_path / "untested", None) as client:
        body = predict(client, png).json()
        assert body["has_tumor"] is None and "how this model fares on photos is not known" in body["warning"]
        assert client.get("/model/info").json()["photo_decisions"]["test_photos"] == 0
    with photo_client(tmp_path / "off", 0.5, min_photo_accuracy=None) as client:
        assert predict(client, png).json()["has_tumor"] is True


def test_a_file_served_model_says_what_data_its_figures_come_from(tmp_path):
    """The web UI's "on synthetic test data" reads the data_source tag, which only a registry version had: a model
    served from its file never showed it. The export step now embeds it in the file."""
    metadata = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "data_source": "synthetic",
                "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2}}
    files = ServedFiles(export_tiny_onnx(tmp_path / "model.onnx", metadata=metadata), tmp_path / "none.pt",
                        write_metrics(tmp_path / "metrics.json"))
    with local_client(file_app(files)) as client:
        tags = client.get("/model/info").json()["tags"]
    assert tags["data_source"] == "synthetic" and tags["onnx_sha256"] == sha256_file(files.onnx)


def test_photo_figures_read_with_care():
    """A NaN accuracy (a hand-made metrics.json) was taken as a figure and /model/info answered 500 (JSON has no
    NaN); at two decimals 28 of 33 photos (0.848) read "0.85, below serve.min_photo_accuracy 0.85"."""
    from tasks.inference.photo_decisions import photo_record, photo_refusal

    kaggle = {"n": 33, "accuracy": 28 / 33}
    assert photo_record({"classification_by_source": {"kaggle": kaggle | {"accuracy": float("nan")}}}) is None
    record = photo_record({"classification_by_source": {"kaggle": kaggle},
                           "ci95": {"classification_by_source.kaggle.accuracy": [0.7, float("inf")]}})
    assert record.ci95 is None  # an interval with a bound that is no number is left out, not printed
    assert "is 0.848, below serve.min_photo_accuracy 0.85" in photo_refusal(record, 0.85)
    # Other shapes a hand-made file may hold: read as not known, never an error (every slice answer reads them, so
    # `n: "35 photos"` made each /v1/predict and /model/info a 500)
    for odd in ({"classification_by_source": {"kaggle": kaggle | {"n": "35 photos"}}},
                {"classification_by_source": {"kaggle": kaggle | {"n": True}}},
                {"classification_by_source": {"kaggle": kaggle | {"n": 0.5}}},
                {"classification_by_source": {"kaggle": [kaggle]}},
                {"classification_by_source": "kaggle"},
                ["not", "an", "object"]):
        assert photo_record(odd) is None, odd
    listed = photo_record({"classification_by_source": {"kaggle": kaggle},
                           "ci95": [["classification_by_source.kaggle.accuracy", [0.7, 0.9]]]})
    assert listed.photos == 33 and listed.ci95 is None


def test_an_out_of_distribution_photo_says_so_before_the_photo_rule(tmp_path):
    """Both reasons would withhold a colour holiday photo; the one the user must hear is that it is no MRI."""
    from tasks.release.examples import colour_photo

    with photo_client(tmp_path, 0.6) as client:
        body = predict(client, png_bytes(colour_photo())).json()
    assert body["has_tumor"] is None and body["withheld"] == "out_of_distribution"
    assert body["warning"].startswith("out of distribution")


def test_predict_mask_lies_where_the_tumour_is(client):
    body = predict(client, png_bytes(brain_slice(size=SIZE, tumour=True, centre=(0.35, 0.65)))).json()
    rows, cols = np.nonzero(decode_png(body["mask_png"]) > 127)
    assert abs(rows.mean() / SIZE - 0.35) < 0.08 and abs(cols.mean() / SIZE - 0.65) < 0.08


def test_predict_without_tumour(client):
    body = predict(client, png_bytes(brain_slice(tumour=False))).json()
    assert body["has_tumor"] is False and body["tumor_probability"] < 0.1 and body["tumor_area_px"] == 0


def test_gradcam_overlay_on_request(client):
    body = predict(client, png_bytes(brain_slice()), gradcam="true").json()
    overlay = decode_png(body["gradcam_png"])
    assert overlay.shape == (SIZE, SIZE, 3)
    assert np.ptp(overlay[..., 0].astype(int) - overlay[..., 2].astype(int)) > 0  # coloured, not gray


def test_a_batch_gives_each_slice_its_own_gradcam_overlay_on_request(client):
    files = [("files", (f"s{i}.png", png_bytes(np.rot90(brain_slice(), i).copy()))) for i in range(2)]
    with_cam = client.post("/v1/predict/batch", files=files, params={"gradcam": "true"}).json()
    overlays = [decode_png(body["gradcam_png"]) for body in with_cam]
    assert [o.shape for o in overlays] == [(SIZE, SIZE, 3)] * 2 and not np.array_equal(*overlays)
    assert all("gradcam_png" not in body for body in client.post("/v1/predict/batch", files=files).json())


def test_gradcam_without_checkpoint_is_a_409(files):
    no_checkpoint = type(files)(files.onnx, files.onnx.with_name("missing.pt"), files.metrics)
    with local_client(file_app(no_checkpoint)) as client:
        response = predict(client, png_bytes(brain_slice()), gradcam="true")
        assert response.status_code == 409 and "checkpoint" in response.json()["detail"]
        assert predict(client, png_bytes(brain_slice())).status_code == 200


def test_gradcam_from_a_checkpoint_the_model_was_not_exported_from_is_a_409(files, tmp_path):
    """The ONNX metadata records the sha256 of the checkpoint it was exported from. Another checkpoint (train_joint
    reran, export has not; or a --checkpoint of another run) would explain another network than the one whose
    probabilities the answer gives: refused with the reason, predictions still served."""
    from tasks.io import sha256_file

    metadata = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "mask_threshold": 0.5,
                "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2}}
    for sha, expected in (("0" * 64, 409), (sha256_file(files.checkpoint), 200)):
        onnx_path = export_tiny_onnx(tmp_path / sha[:4] / "model.onnx",
                                     metadata=metadata | {"checkpoint": {"sha256": sha}})
        with local_client(file_app(ServedFiles(onnx_path, files.checkpoint, files.metrics))) as client:
            # /model/info says so before anyone asks (it said "gradcam_checkpoint": true for any checkpoint)
            served = client.get("/model/info").json()["served"]
            assert served["gradcam_checkpoint"] is (expected == 200)
            assert (served["gradcam_unavailable"] is None) is (expected == 200)
            response = predict(client, png_bytes(brain_slice()), gradcam="true")
            assert response.status_code == expected, response.text
            if expected == 409:
                assert served["gradcam_unavailable"] == response.json()["detail"]
            if expected == 409:
                assert "not the checkpoint the served ONNX model was exported from" in response.json()["detail"]
                assert predict(client, png_bytes(brain_slice())).status_code == 200


def test_a_checkpoint_rewritten_after_model_info_asked_is_still_refused_for_grad_cam(files, tmp_path):
    """Review 2026-12-07: the digest was compared once, when /model/info first asked (the UI asks at page load); a
    checkpoint rewritten after that (train_joint reran) was then loaded for Grad-CAM without the 409."""
    import shutil

    from tasks.io import sha256_file

    checkpoint = shutil.copy(files.checkpoint, tmp_path / "best.pt")
    metadata = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "mask_threshold": 0.5,
                "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2},
                "checkpoint": {"sha256": sha256_file(checkpoint)}}
    onnx_path = export_tiny_onnx(tmp_path / "model.onnx", metadata=metadata)
    with local_client(file_app(ServedFiles(onnx_path, Path(checkpoint), files.metrics))) as client:
        assert client.get("/model/info").json()["served"]["gradcam_checkpoint"] is True
        Path(checkpoint).write_bytes(Path(checkpoint).read_bytes() + b"rewritten")
        response = predict(client, png_bytes(brain_slice()), gradcam="true")
        assert response.status_code == 409 and "not the checkpoint" in response.json()["detail"]


def test_batch_answers_each_file_in_order(client):
    uploads = [("files", (f"s{i}.png", png_bytes(brain_slice(tumour=i % 2 == 1)))) for i in range(5)]
    body = client.post("/v1/predict/batch", files=uploads).json()
    assert [r["filename"] for r in body] == [f"s{i}.png" for i in range(5)]
    assert [r["has_tumor"] for r in body] == [i % 2 == 1 for i in range(5)]


def test_volume_mask_restacked_on_the_input_grid(client):
    volume, truth = brain_volume()
    data, affine = nifti_bytes(volume, spacing=(1.0, 1.5, 2.0))
    body = client.post("/v1/predict/volume", files={"file": ("patient.nii.gz", data)}).json()
    assert [s["slice"] for s in body["slices"]] == list(range(volume.shape[2]))
    assert body["tumor_slices"] == [4, 5, 6]
    mask_image = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["mask_nifti"])))
    mask = np.asarray(mask_image.dataobj)
    assert mask.shape == volume.shape and np.allclose(mask_image.affine, affine)
    dice = 2 * (mask * truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.7  # orientation undone: a rotated or flipped mask would miss the off-centre box
    assert body["tumor_volume_cm3"] == pytest.approx(mask.sum() * 1.0 * 1.5 * 2.0 / 1000, abs=1e-4)
    assert body["mask_nifti_filename"] == "patient_mask.nii.gz"
    assert "image_png" not in body["slices"][0]


def test_a_volume_stored_another_way_gets_the_same_slices_and_a_mask_on_its_own_grid(client):
    """The same anatomy stored as LPS (BraTS) and as RAS (nibabel / MONAI canonical): the slice answers and pictures
    are the same (display orientation, anterior up), and each mask NIfTI overlays its own file."""
    from tests.test_orientation import stored_as

    volume, truth = brain_volume()
    data, affine = nifti_bytes(volume, spacing=(1.0, 1.5, 2.0), compress=False)
    lps = nib.Nifti1Image.from_bytes(data)

    def stored(axes, image=lps):
        return stored_as(image, axes)

    ras, srp = stored(("R", "A", "S")), stored(("S", "R", "P"))  # srp: axial axis stored first, spacing permuted
    answers = {}
    for name, image in (("lps", lps), ("ras", ras), ("srp", srp)):
        body = client.post("/v1/predict/volume?images=true",
                           files={"file": (f"{name}.nii", image.to_bytes())}).json()
        mask_image = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["mask_nifti"])))
        assert np.allclose(mask_image.affine, image.affine), name
        answers[name] = (body, mask_image)
    (lps_body, lps_mask), (ras_body, ras_mask) = answers["lps"], answers["ras"]
    srp_body, srp_mask = answers["srp"]
    assert [answers[n][0]["orientation"] for n in ("lps", "ras", "srp")] == ["LPS", "RAS", "SRP"]
    np.testing.assert_array_equal(np.asarray(ras_mask.dataobj), np.asarray(lps_mask.dataobj)[::-1, ::-1])
    lps_mask_as_srp = stored(("S", "R", "P"), nib.Nifti1Image(np.asarray(lps_mask.dataobj), affine))
    np.testing.assert_array_equal(np.asarray(srp_mask.dataobj), np.asarray(lps_mask_as_srp.dataobj))
    assert lps_body["tumor_slices"] == ras_body["tumor_slices"] == srp_body["tumor_slices"] == [4, 5, 6]
    for a, b, c in zip(lps_body["slices"], ras_body["slices"], srp_body["slices"]):
        for key in ("image_png", "mask_png", "tumor_area_px", "tumor_area_mm2"):  # mm²: the in-plane spacing turns
            assert a[key] == b[key] == c[key], (a["slice"], key)
    dice = 2 * (np.asarray(lps_mask.dataobj) * truth).sum() / (np.asarray(lps_mask.dataobj).sum() + truth.sum())
    assert dice > 0.7
    # anterior up, the patient's right on the left: the box lies posterior (y 26-34 of 48, LPS) and on the patient's
    # right (x 8-16 of 40), so in the slice picture it is in the lower half and on the left
    rows, cols = np.nonzero(decode_png(lps_body["slices"][5]["mask_png"]) > 0)
    side = decode_png(lps_body["slices"][5]["mask_png"]).shape[0]
    assert rows.size and rows.min() >= side // 2 and cols.max() < side // 2


def test_voxel_sizes_in_metres_or_microns_are_converted_to_millimetres(client):
    """pixdim is in the header's xyzt unit: the same voxels stated in metres are 1000× larger in each axis."""
    volume, _ = brain_volume()
    answers = {}
    for unit, scale in (("mm", 1.0), ("meter", 0.001), ("micron", 1000.0)):
        image = nib.Nifti1Image(volume, np.diag([1.0 * scale, 1.5 * scale, 2.0 * scale, 1.0]))
        image.header.set_xyzt_units(unit)
        answers[unit] = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", gzip.compress(image.to_bytes()))}).json()
    odd = nib.Nifti1Image(volume, np.diag([1.0, 1.5, 2.0, 1.0]))
    odd.header["xyzt_units"] = 4  # a space-unit code NIfTI does not define: read as unknown, i.e. mm
    answers["odd"] = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", gzip.compress(odd.to_bytes()))}).json()
    for unit in ("meter", "micron", "odd"):
        assert answers[unit]["voxel_spacing_mm"] == pytest.approx([1.0, 1.5, 2.0]), unit
        assert answers[unit]["tumor_volume_cm3"] == pytest.approx(answers["mm"]["tumor_volume_cm3"]), unit
    assert answers["mm"]["tumor_volume_cm3"] > 0


def test_a_nan_background_reads_as_zero_as_the_slice_step_reads_it(client):
    volume, _ = brain_volume()
    with_nan = np.where(volume > 0, volume, np.nan).astype(np.float32)
    answers = [client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(v)[0])})
               for v in (volume.astype(np.float32), with_nan)]
    assert [a.status_code for a in answers] == [200, 200], answers[1].text
    assert answers[1].json()["tumor_slices"] == answers[0].json()["tumor_slices"]
    assert answers[1].json()["tumor_volume_cm3"] == answers[0].json()["tumor_volume_cm3"]


def test_outputs_keep_the_inputs_qform_and_sform_and_drop_its_display_window(client):
    """Scanner space in the qform, a registered space in the sform: each output keeps both as they were, so any
    viewer places the overlay where it places the input; a 0..3000 window would show a 0..4 label map black."""
    volume, _ = brain_volume()
    image = nib.Nifti1Image(volume, None)
    qform, sform = np.diag([-1.0, -1.5, 2.0, 1.0]), np.diag([-1.0, -1.5, 2.0, 1.0])
    qform[:3, 3], sform[:3, 3] = [10.0, 220.0, -30.0], [-90.0, 126.0, -72.0]
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    image.header["cal_min"], image.header["cal_max"] = 0, 3000
    body = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", gzip.compress(image.to_bytes()))}).json()
    for key in ("mask_nifti", "label_map_nifti", "uncertainty_nifti"):
        out = decode_nifti(body[key])
        q, q_code = out.header.get_qform(coded=True)
        s, s_code = out.header.get_sform(coded=True)
        assert (int(q_code), int(s_code)) == (1, 2), key
        np.testing.assert_allclose(q, qform, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(s, sform, atol=1e-4, err_msg=key)
        assert (float(out.header["cal_min"]), float(out.header["cal_max"])) == (0.0, 0.0), key


def test_an_input_without_qform_or_sform_gives_outputs_without_them(client):
    """Both codes 0: each reader places the input by its own fallback (nifti1.h's method 1 uses pixdim alone;
    nibabel's flips x and centres). Outputs written with nibabel's fallback as codes 1/1 showed mirrored and shifted
    in ITK-based viewers; with both codes 0 too, every reader places them as it places the input."""
    volume, _ = brain_volume()
    header = nib.Nifti1Header()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.2, 2.0))
    header["qform_code"], header["sform_code"], header["vox_offset"] = 0, 0, 352
    data = header.binaryblock + b"\0" * 4 + volume.astype(np.float32).tobytes(order="F")
    uploaded = nib.Nifti1Image.from_bytes(data)
    response = client.post("/v1/predict/volume", files={"file": ("noform.nii", data)})
    assert response.status_code == 200, response.text
    for key in ("mask_nifti", "label_map_nifti", "uncertainty_nifti"):
        out = decode_nifti(response.json()[key])
        assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, 0), key
        assert out.header.get_zooms()[:3] == pytest.approx((1.0, 1.2, 2.0)), key
        np.testing.assert_allclose(out.affine, uploaded.affine, atol=1e-6, err_msg=key)  # nibabel: the same place


def test_a_slices_tumour_area_is_in_the_uploads_pixels_whatever_its_size_or_shape(client):
    """The same picture at 64² and 128²: four times the pixels, as the volume route counts them on the input's grid;
    the 64² picture inside a 64 x 128 frame: the same disc, so about the same pixels (the pad holds no tumour)."""
    small = predict(client, png_bytes(brain_slice(size=64))).json()["tumor_area_px"]
    large = predict(client, png_bytes(brain_slice(size=128))).json()["tumor_area_px"]
    assert small > 0 and large == pytest.approx(4 * small, rel=0.15)
    wide = np.zeros((64, 128), np.uint8)
    wide[:, 32:96] = brain_slice(size=64)
    assert predict(client, png_bytes(wide)).json()["tumor_area_px"] == pytest.approx(small, rel=0.25)  # same disc


@pytest.mark.parametrize(("disposition", "filename"), [
    (b'form-data; name="file"; filename*=UTF-8\'\'%C3%A9t%C3%A9.png', "\u00e9t\u00e9.png"),  # RFC 5987 alone
    (b'form-data; name="file"', None),  # no filename at all: curl -F 'file=<scan.png'
], ids=["filename-star", "no-filename"])
def test_a_file_field_without_a_plain_filename_is_still_the_file(client, disposition, filename):
    body = (b"--b0und\r\nContent-Disposition: " + disposition + b"\r\nContent-Type: image/png\r\n\r\n"
            + png_bytes(brain_slice()) + b"\r\n--b0und--\r\n")
    answer = client.post("/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b0und"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["filename"] == (filename or "file")


def decode_nifti(b64: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(b64)))


def test_volume_answer_has_label_map_uncertainty_and_regions_with_the_input_affine(client):
    volume, truth = brain_volume()
    data, affine = nifti_bytes(volume, spacing=(1.0, 1.5, 2.0))
    body = client.post("/v1/predict/volume", files={"file": ("patient.nii.gz", data)}).json()
    labels, uncertainty = decode_nifti(body["label_map_nifti"]), decode_nifti(body["uncertainty_nifti"])
    for image in (labels, uncertainty):
        assert image.shape == volume.shape and np.allclose(image.affine, affine)
        assert image.header.get_zooms()[:3] == pytest.approx((1.0, 1.5, 2.0))
    label_map = np.asarray(labels.dataobj)
    assert label_map.dtype == np.uint8 and set(np.unique(label_map)) == {0, 2}  # a WT-only model: all oedema
    assert np.asarray(uncertainty.dataobj).dtype == np.float32
    assert body["regions"] == ["wt"] and body["region_volumes_cm3"]["tc"] is None
    assert body["region_volumes_cm3"]["wt"] == pytest.approx((label_map > 0).sum() * 3.0 / 1000, abs=1e-4)
    assert body["label_map_nifti_filename"] == "patient_labels.nii.gz"
    assert body["uncertainty_nifti_filename"] == "patient_uncertainty.nii.gz"
    summary = body["uncertainty"]
    assert summary["kind"] == "entropy" and summary["tta_flips"] == [[]]
    assert 0 <= summary["mean"] <= 1 and 0 < summary["p95"] <= 1 and summary["mean_in_tumour"] > summary["mean"]
    # the clean-up's account: the kept components make up the whole-tumour mask it returned, in cm³ and voxels
    cleanup = body["cleanup"]
    kept = [c for c in cleanup["components"] if c["kept"]]
    assert cleanup["kept"] == len(kept) >= 1 and cleanup["components_not_listed"] == 0
    assert sum(c["voxels"] for c in kept) == (label_map > 0).sum()
    assert sum(c["volume_cm3"] for c in kept) == pytest.approx(body["region_volumes_cm3"]["wt"], abs=1e-3)
    assert cleanup["dropped"] == len(cleanup["components"]) - len(kept)
    assert all(0 <= c["slices"][0] <= c["slices"][1] < volume.shape[2] for c in cleanup["components"])


def test_a_volume_answer_shows_where_the_clean_up_dropped_a_lesion(client):
    """A speck far smaller than the tumour is dropped from the masks; the slice that held it carries its pixels as
    `dropped_png` with the slice images (the viewer draws them apart), and no other slice does."""
    volume, _ = brain_volume()
    volume[30:33, 10:13, 5] = 900  # a 9-voxel speck on slice 5, far from the tumour (192 voxels, slices 4-6)
    upload = {"file": ("speck.nii.gz", nifti_bytes(volume)[0])}
    body = client.post("/v1/predict/volume?images=true", files=upload).json()
    dropped = [c for c in body["cleanup"]["components"] if not c["kept"]]
    assert [c["slices"] for c in dropped] == [[5, 5]] and "voxels < 0.30 x" in dropped[0]["reason"]  # for its size
    assert [s["slice"] for s in body["slices"] if "dropped_png" in s] == [5]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["slices"][5]["dropped_png"]))))
    kept = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["slices"][5]["mask_png"]))))
    assert (shown > 0).any() and not ((shown > 0) & (kept > 0)).any()  # the speck's pixels, none of the tumour's


def tumour_free_client(folder, largest_voxels: int | None):
    """A client of the tiny model whose metrics.json measured its 7 tumour-free twins: 2 left with a tumour, the
    largest `largest_voxels` (1 mm voxels), 2 called tumour; None: no such measurement (real data, older models)."""
    metrics = write_metrics(folder / "metrics.json")
    if largest_voxels is not None:
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"tumour_free_volumes": {
            "n": 7, "with_predicted_tumour": 2, "with_predicted_tumour_ci95": [0.082, 0.641], "called_tumour": 2,
            "predicted_voxels_max": largest_voxels}}))
    return local_client(file_app(ServedFiles(export_tiny_onnx(folder / "model.onnx"), folder / "none.pt", metrics)))


def test_a_volume_answer_puts_its_tumour_beside_what_the_model_paints_on_brains_without_one(tmp_path):
    """BraTS has no healthy brain: a volume answer's tumour read as a finding, whatever the same model paints on a
    brain without one. The answer now carries evaluate's tumour-free twins (`tumour_free_reference`), and says when
    its own whole tumour is no larger than the largest false one among them."""
    volume, _ = brain_volume()
    upload = {"file": ("patient.nii.gz", nifti_bytes(volume)[0])}
    answers = {}
    for name, largest in (("none", None), ("small", 10), ("large", 10 ** 6)):
        with tumour_free_client(tmp_path / name, largest) as client:
            answers[name] = client.post("/v1/predict/volume", files=upload).json()
    found = answers["none"]["tumor_volume_cm3"]
    assert found > 0 and answers["none"]["has_tumor"] is True
    assert answers["none"]["tumour_free_reference"] is None  # nothing measured: nothing claimed
    small, large = answers["small"]["tumour_free_reference"], answers["large"]["tumour_free_reference"]
    assert (small["largest_cm3"], large["largest_cm3"]) == (0.01, 1000.0)  # the twins' 1 mm voxels
    assert small["finding_within"] is False and f"This whole tumour ({found:g} cm³) is larger than those, but 7 " \
        "brains do not bound how large a false one can be" in small["note"]  # no all-clear from a few brains
    assert large["finding_within"] is True and large["note"].startswith("No larger than a false tumour")
    assert "left a false tumour in 2 (29 %, 95 % interval 8-64 %; the largest 1000 cm³), and its decision called 2 " \
        "of them tumour" in large["note"] and large["with_predicted_tumour_ci95"] == [0.082, 0.641]
    with tumour_free_client(tmp_path / "empty", 10 ** 6) as client:  # a brain where the model finds nothing
        empty, truth = brain_volume()
        empty[truth.astype(bool)] = 300  # the tumour box as brain
        body = client.post("/v1/predict/volume", files={"file": ("empty.nii.gz", nifti_bytes(empty)[0])}).json()
    assert body["tumor_volume_cm3"] == 0 and body["has_tumor"] is False
    assert body["tumour_free_reference"]["finding_within"] is None and body["tumour_free_reference"]["note"] is None


@pytest.fixture(scope="module")
def regions_client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regions")
    metrics = write_metrics(folder / "metrics.json")
    report = json.loads(metrics.read_text())
    report["segmentation_regions"] = {"wt": {"dice": 0.88, "hd95": 6.1}, "tc": {"dice": 0.81, "hd95": 8.0},
                                      "et": {"dice": 0.77, "hd95": 9.5}}
    metrics.write_text(json.dumps(report))
    files = ServedFiles(export_regions_onnx(folder / "model.onnx"), folder / "none.pt", metrics)
    with local_client(file_app(files)) as client:
        yield client


def test_model_info_shows_the_three_regions_and_their_metrics(regions_client):
    info = regions_client.get("/model/info").json()
    assert info["served"]["regions"] == ["wt", "tc", "et"] and info["served"]["in_channels"] == 4
    assert info["model"]["regions"] == ["wt", "tc", "et"]
    assert info["metrics"]["segmentation_regions"]["et"] == {"dice": 0.77, "hd95": 9.5}


def modality_volumes():
    """FLAIR with a large bright box (WT), T1 a smaller one (TC), T1ce a smaller one still (ET); T2 plain."""
    boxes = {"flair": ((8, 18), (24, 36), (3, 8)), "t1": ((10, 16), (26, 34), (4, 7)),
             "t1ce": ((11, 15), (28, 32), (4, 6)), "t2": ((0, 0), (0, 0), (0, 0))}
    return {m: brain_volume(tumour_box=box) for m, box in boxes.items()}


def test_four_modality_upload_gives_three_regions_and_their_cm3(regions_client):
    volumes = modality_volumes()
    uploads, affine = {}, None
    for modality, (volume, _) in volumes.items():
        data, affine = nifti_bytes(volume, spacing=(1.0, 1.5, 2.0))
        uploads[modality] = (f"p_{modality}.nii.gz", data)
    body = regions_client.post("/v1/predict/volume", files=uploads).json()
    assert body["regions"] == ["wt", "tc", "et"] and body["filename"] == "p_flair.nii.gz"
    assert body["modalities"] == {"sent": ["flair", "t1", "t1ce", "t2"], "missing": [], "empty": []}
    labels = decode_nifti(body["label_map_nifti"])
    assert np.allclose(labels.affine, affine)
    label_map = np.asarray(labels.dataobj)
    assert set(np.unique(label_map)) == {0, 1, 2, 4}
    voxel_cm3 = 1.0 * 1.5 * 2.0 / 1000
    hand_count = {"wt": np.isin(label_map, (1, 2, 4)).sum(), "tc": np.isin(label_map, (1, 4)).sum(),
                  "et": (label_map == 4).sum()}
    for region, count in hand_count.items():
        assert body["region_volumes_cm3"][region] == pytest.approx(count * voxel_cm3, abs=1e-4)
    for region, modality in (("wt", "flair"), ("tc", "t1"), ("et", "t1ce")):  # each region where its box is
        truth = volumes[modality][1].astype(bool)
        predicted = np.isin(label_map, {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}[region])
        assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.6, region
    assert body["tumor_volume_cm3"] == body["region_volumes_cm3"]["wt"]


def test_flair_alone_and_4d_upload_for_a_four_modality_model(regions_client):
    volumes = modality_volumes()
    flair_only = regions_client.post("/v1/predict/volume", files={
        "file": ("f.nii.gz", nifti_bytes(volumes["flair"][0])[0])}).json()
    assert flair_only["region_volumes_cm3"]["wt"] > 0  # T1 and T1ce are zero channels: no core, no ET
    assert flair_only["region_volumes_cm3"]["tc"] == 0 and flair_only["region_volumes_cm3"]["et"] == 0
    assert flair_only["modalities"] == {"sent": ["flair"], "missing": ["t1", "t1ce", "t2"], "empty": []}
    stacked = np.stack([volumes[m][0] for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
    data, affine = nifti_bytes(stacked, spacing=(1.0, 1.5, 2.0))
    four_d = regions_client.post("/v1/predict/volume", files={"file": ("all.nii.gz", data)}).json()
    labels = decode_nifti(four_d["label_map_nifti"])
    assert labels.shape == stacked.shape[:3] and np.allclose(labels.affine, affine)
    assert four_d["region_volumes_cm3"]["et"] > 0 and four_d["modalities"]["missing"] == []
    three = regions_client.post("/v1/predict/volume", files={"file": ("three.nii.gz", nifti_bytes(
        stacked[..., :3])[0])})  # a 4D file of the wrong channel count is named as such, not as the wrong rank
    assert three.status_code == 422 and "three.nii.gz" in three.json()["detail"]
    assert "holds 3 volumes where the model takes 4" in three.json()["detail"]


def test_a_volume_under_a_field_the_route_does_not_take_is_named_not_dropped(regions_client):
    """BraTS 2023's names (t1n, t1c, t2w) or a seg file beside a FLAIR were dropped with a 200 answered from the
    FLAIR alone; each is now a 422 naming the file and the fields the route takes."""
    volume = nifti_bytes(modality_volumes()["flair"][0])[0]
    for field in ("t1n", "seg"):
        response = regions_client.post("/v1/predict/volume", files={"flair": ("p_flair.nii.gz", volume),
                                                                    field: (f"p_{field}.nii.gz", volume)})
        assert response.status_code == 422
        assert response.json()["detail"] == (f"p_{field}.nii.gz: sent as field '{field}', which this route does not "
                                             "take; send it as 'file', 'flair', 't1', 't1ce', 't2'")
    wrong_field = regions_client.post("/v1/predict", files={"image": ("a.png", png_bytes(brain_slice()))})
    assert wrong_field.status_code == 422 and "a.png: sent as field 'image'" in wrong_field.json()["detail"]


def test_four_volumes_reserve_more_of_the_memory_budget_than_one(regions_client):
    volume = nifti_bytes(modality_volumes()["flair"][0])[0]
    budget = regions_client.app.state.budget
    budget.peak = 0
    assert regions_client.post("/v1/predict/volume", files={"flair": ("f.nii.gz", volume)}).status_code == 200
    one = budget.peak
    budget.peak = 0
    four = regions_client.post("/v1/predict/volume", files={m: (f"{m}.nii.gz", volume) for m in
                                                            ("flair", "t1", "t1ce", "t2")})
    assert four.status_code == 200 and budget.peak > one > 0 and budget.in_use == 0


def test_the_tumour_free_reference_claims_nothing_it_cannot():
    """Found by a review: no false tumour on 7 brains read as `finding_within: false` (larger than any false one),
    and an out-of-distribution volume, whose decision is withheld, was compared with brains drawn like the training
    data. Both now get no verdict; the first still gets the figures, with their interval."""
    from tasks.inference.tumour_free_reference import tumour_free_reference

    clean = {"n": 7, "with_predicted_tumour": 0, "called_tumour": 0, "predicted_voxels_max": 0,
             "with_predicted_tumour_ci95": [0.0, 0.354]}
    none_painted = tumour_free_reference({"tumour_free_volumes": clean}, 5.0, True)
    assert none_painted["finding_within"] is None
    assert "left a false tumour in none (95 % interval 0-35 %)" in none_painted["note"]
    painted = clean | {"with_predicted_tumour": 2, "predicted_voxels_max": 763}
    withheld = tumour_free_reference({"tumour_free_volumes": painted}, 0.5, None)
    assert withheld["finding_within"] is None and withheld["note"] is None
    assert tumour_free_reference({"tumour_free_volumes": painted}, 0.5, True)["finding_within"] is True
    odd = painted | {"n": float("nan")}  # a hand-made metrics.json
    assert tumour_free_reference({"tumour_free_volumes": odd}, 0.5, True) is None


def test_volume_tta_flag_runs_the_configured_flips(regions_client):
    volume = nifti_bytes(modality_volumes()["flair"][0])[0]
    plain = regions_client.post("/v1/predict/volume", files={"flair": ("f.nii.gz", volume)},
                                params={"tta": "false"}).json()
    tta = regions_client.post("/v1/predict/volume", files={"flair": ("f.nii.gz", volume)},
                              params={"tta": "true", "images": "true"}).json()
    assert plain["uncertainty"]["tta_flips"] == [[]] and tta["uncertainty"]["tta_flips"] == [[], [3]]
    # the stand-in model is pointwise, so flipped copies agree once flipped back: TTA changes nothing
    assert tta["region_volumes_cm3"] == plain["region_volumes_cm3"]
    item = tta["slices"][5]
    assert decode_png(item["labels_png"]).shape == (SIZE, SIZE, 4)
    overlay = decode_png(item["uncertainty_png"])
    assert overlay.shape == (SIZE, SIZE, 4) and overlay[..., 3].min() == 0  # transparent where certain


def test_single_channel_slice_goes_to_the_flair_channel_of_a_four_modality_model(regions_client):
    body = regions_client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice()))}).json()
    assert body["has_tumor"] is True and body["tumor_area_px"] > 0
    # said in the answer, as the volume route says it: the Slice view warned of nothing
    assert body["modalities"] == {"sent": ["flair"], "missing": ["t1", "t1ce", "t2"]}
    four = np.stack([brain_slice().astype(np.float32)] * 4)
    answer = regions_client.post("/v1/predict", files={"file": ("s.npy", npy_bytes(four))}).json()
    assert answer["modalities"] == {"sent": ["flair", "t1", "t1ce", "t2"], "missing": []}


@pytest.mark.parametrize(("files", "words"), [
    ({"t1": "a"}, "no flair"),
    ({"file": "a", "flair": "b"}, "at most once"),
    ({"flair": "a", "t1": "small"}, "co-registered"),
])
def test_bad_modality_uploads_are_422(regions_client, files, words):
    volume, _ = brain_volume()
    small, _ = brain_volume(shape=(40, 48, 8), tumour_box=((8, 16), (26, 34), (4, 7)))
    data = {"a": nifti_bytes(volume)[0], "b": nifti_bytes(volume)[0], "small": nifti_bytes(small)[0]}
    response = regions_client.post("/v1/predict/volume", files={k: (f"{k}.nii.gz", data[v]) for k, v in files.items()})
    assert response.status_code == 422 and words in response.json()["detail"].lower(), response.text


def test_a_volume_answer_gives_the_shown_slices_proportions_in_mm(regions_client):
    """The slice images are square whatever the volume's in-plane shape (resized per axis, as training slices are),
    so the viewer drew a 40 x 48 volume of 1 x 1.5 mm voxels as a square; the answer says its height over width."""
    volume, _ = brain_volume(shape=(40, 48, 8), tumour_box=((8, 16), (26, 34), (4, 7)))
    answer = regions_client.post("/v1/predict/volume", files={"flair": ("f.nii.gz", nifti_bytes(volume)[0])}).json()
    assert answer["shape"][:2] == [40, 48] and answer["voxel_spacing_mm"][:2] == [1.0, 1.5]
    assert answer["display_aspect"] == pytest.approx(48 * 1.5 / (40 * 1.0))  # rows: y (anterior up), columns: x


def test_modalities_of_one_shape_on_another_affine_are_told_so_not_that_their_shapes_differ(regions_client):
    """A RAS-stored FLAIR with an LPS-stored T1 of the same shape said "shape [..] and affine differ from .. [..]",
    two identical shapes; it names the orientations now."""
    volume, _ = brain_volume()
    flair = nifti_bytes(volume)[0]
    t1 = gzip.compress(nib.Nifti1Image(volume, np.diag([1.0, 1.5, 2.0, 1.0])).to_bytes())  # RAS, the other LPS
    response = regions_client.post("/v1/predict/volume", files={"flair": ("f.nii.gz", flair),
                                                                 "t1": ("t.nii.gz", t1)})
    detail = response.json()["detail"]
    assert response.status_code == 422 and "same shape, but another affine" in detail, detail
    assert "orientation RAS against LPS" in detail and "co-registered" in detail


def test_a_cameras_mpo_jpeg_is_its_first_picture_and_an_animation_is_refused(client):
    picture = Image.fromarray(brain_slice()).convert("RGB")
    preview = Image.fromarray(np.zeros((32, 32), np.uint8)).convert("RGB")
    mpo, jpeg, gif = io.BytesIO(), io.BytesIO(), io.BytesIO()
    picture.save(mpo, format="MPO", save_all=True, append_images=[preview], quality=95)
    picture.save(jpeg, format="JPEG", quality=95)
    picture.save(gif, format="PNG", save_all=True, append_images=[preview])  # an animated PNG
    from_mpo = client.post("/v1/predict", files={"file": ("camera.jpg", mpo.getvalue())})
    from_jpeg = client.post("/v1/predict", files={"file": ("camera.jpg", jpeg.getvalue())}).json()
    assert from_mpo.status_code == 200, from_mpo.text
    assert from_mpo.json()["tumor_probability"] == pytest.approx(from_jpeg["tumor_probability"], abs=1e-6)
    animated = client.post("/v1/predict", files={"file": ("cine.png", gif.getvalue())})
    assert animated.status_code == 422 and animated.json()["detail"].startswith("cine.png: an animated")


def test_modalities_a_flair_model_cannot_read_are_named_by_their_files(client):
    volume, _ = brain_volume()
    data = nifti_bytes(volume)[0]
    uploads = {"flair": ("p_flair.nii.gz", data), "t2": ("p_t2.nii.gz", data), "t1": ("p_t1.nii.gz", data)}
    response = client.post("/v1/predict/volume", files=uploads)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == ("p_t1.nii.gz, p_t2.nii.gz: the served model takes flair; it has no channel "
                                         "for t1, t2")


def test_volume_uncompressed_with_slice_images(client):
    volume, _ = brain_volume()
    data, _ = nifti_bytes(volume, compress=False)
    body = client.post("/v1/predict/volume", files={"file": ("p.nii", data)}, params={"images": "true"}).json()
    assert decode_png(body["slices"][5]["mask_png"]).max() == 255
    assert decode_png(body["slices"][0]["image_png"]).shape == (SIZE, SIZE)


def test_web_ui_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "SliceWise" in page.text
    from tests.conftest import REPO

    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.text == (REPO / "serve" / "static" / asset).read_text()  # the file itself, whole


def test_reload_picks_up_a_replaced_model_file(tmp_path):
    files = make_served_files(tmp_path)
    with local_client(file_app(files)) as client:
        assert client.post("/model/reload").json()["changed"] is False
        assert client.get("/model/info").json()["served"]["threshold"] == 0.5
        replacement = export_tiny_onnx(tmp_path / "new.onnx", threshold=0.9)
        os.replace(replacement, files.onnx)  # as the export step does: a new file renamed over the old one
        assert client.post("/model/reload").json()["changed"] is True
        assert client.get("/model/info").json()["served"]["threshold"] == 0.9


def test_a_model_file_removed_while_it_is_exported_again_is_still_served(tmp_path):
    """`dvc repro` removes exports/model.onnx before export writes the new one: a server started with --model-file
    answered 503 for the whole export (and until the next one, when it failed)."""
    files = make_served_files(tmp_path)
    with local_client(file_app(files)) as client:
        files.onnx.unlink()
        assert client.post("/model/reload").json()["changed"] is False
        assert "is gone (being exported again?): still serving" in client.get("/healthz").json()["detail"]
        assert predict(client, png_bytes(brain_slice())).status_code == 200
        export_tiny_onnx(files.onnx, threshold=0.9)
        assert client.post("/model/reload").json()["changed"] is True
        assert client.get("/model/info").json()["served"]["threshold"] == 0.9


def test_a_reload_whose_check_failed_is_a_503_and_the_loaded_model_stays(tmp_path, monkeypatch):
    """It answered 200 {"changed": false, "error": ...}: a script registering a model and asking for a reload read
    "nothing changed" while the store was down."""
    files = make_served_files(tmp_path)
    with local_client(file_app(files)) as client:
        source = client.app.state.holder.source

        def store_down():
            raise ConnectionError("the registry did not answer")

        monkeypatch.setattr(source, "current_key", store_down)
        response = client.post("/model/reload")
        assert response.status_code == 503 and response.json()["changed"] is False
        assert "the registry did not answer" in response.json()["detail"]
        assert predict(client, png_bytes(brain_slice())).status_code == 200  # still serving what was loaded


def test_a_slice_sent_alone_is_judged_at_its_own_threshold_and_a_volume_at_the_evaluated_one(tmp_path):
    """model.json's `threshold` was chosen on slices scored in their volume (after the clean-up), which a slice sent
    alone never is: /v1/predict applies `lone_slice_threshold`, chosen on slices scored alone; the volume route keeps
    `threshold`. A model without the key uses `threshold` for both."""
    files = make_served_files(tmp_path)
    meta = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "lone_slice_threshold": 0.99995,
            "mask_threshold": 0.5, "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2}}
    export_tiny_onnx(files.onnx, metadata=meta)
    with local_client(file_app(files)) as client:
        served = client.get("/model/info").json()["served"]
        assert served["threshold"] == 0.5 and served["lone_slice_threshold"] == 0.99995
        alone = client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice(tumour=True)))}).json()
        assert alone["threshold"] == 0.99995 and 0.5 < alone["tumor_probability"] < 0.99995
        assert alone["has_tumor"] is False  # at 0.5 it would be a tumour
        volume = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(brain_volume()[0])[0])}).json()
        assert volume["threshold"] == 0.5 and volume["has_tumor"] is True
        assert [s["slice"] for s in volume["slices"] if s["has_tumor"]] == [4, 5, 6]
    export_tiny_onnx(files.onnx, metadata={k: v for k, v in meta.items() if k != "lone_slice_threshold"})
    with local_client(file_app(files)) as client:
        assert client.get("/model/info").json()["served"]["lone_slice_threshold"] == 0.5
        assert client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice(tumour=True)))}
                           ).json()["has_tumor"] is True


def test_an_export_without_metadata_takes_every_threshold_from_its_evaluation(tmp_path):
    """The decision threshold and its rule came from metrics.json, the mask cut did not: it stayed 0.5 where
    evaluation had cut the masks at its validation choice (0.65 on today's quick model)."""
    from serve.served_model import load_served_model

    bare = export_tiny_onnx(tmp_path / "bare.onnx", metadata={})
    metrics = {"classification": {"threshold": 0.4},
               "classification_threshold": {"value": 0.4, "slice_score": "fused", "lone_slice_value": 0.7},
               "segmentation_threshold": {"value": 0.65, "rule": "validation"}}
    served = load_served_model(bare, {}, metrics=metrics)
    assert (served.threshold, served.mask_threshold, served.lone_slice_threshold) == (0.4, 0.65, 0.7)
    meta = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "model_config": {"in_channels": 1}}
    older = load_served_model(export_tiny_onnx(tmp_path / "older.onnx", metadata=meta), {}, metrics=metrics)
    assert (older.threshold, older.mask_threshold, older.lone_slice_threshold) == (0.5, 0.5, None)  # its own word


def test_metrics_of_another_model_are_not_served_as_this_ones(tmp_path, caplog):
    """`--model-file` reads `--metrics` (reports/metrics.json by default) whatever export it serves: an export paired
    with a later evaluation of another checkpoint showed that one's figures, and decided photos by them."""
    from serve.served_model import load_served_model

    meta = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "mask_threshold": 0.5,
            "model_config": {"in_channels": 1}, "checkpoint": {"sha256": "a" * 64}}
    onnx = export_tiny_onnx(tmp_path / "model.onnx", metadata=meta)
    figures = {"classification": {"accuracy": 0.93}, "model": {"checkpoint_sha256": "a" * 64},
               "classification_by_source": {"kaggle": {"n": 35, "accuracy": 0.9}}}
    own = load_served_model(onnx, {}, metrics=figures)
    assert own.card["metrics"]["classification"]["accuracy"] == 0.93 and own.photos is not None
    with caplog.at_level("WARNING"):
        other = load_served_model(onnx, {}, metrics={**figures, "model": {"checkpoint_sha256": "b" * 64}})
    assert other.card["metrics"] == {} and other.photos is None
    assert "scored checkpoint bbbbbbbbbbbb, this model was exported from aaaaaaaaaaaa" in caplog.text


def test_the_model_says_what_its_threshold_applies_to(tmp_path):
    """model.json's `slice_score` is how evaluation scored slices; serving scores them the same way, and an older
    model without it is the classifier's."""
    from serve.served_model import load_served_model
    from tasks.errors import SliceWiseError

    meta = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "mask_threshold": 0.5,
            "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2}}
    fused = load_served_model(export_tiny_onnx(tmp_path / "fused.onnx", metadata=meta | {"slice_score": "fused"}), {})
    older = load_served_model(export_tiny_onnx(tmp_path / "older.onnx", metadata=meta), {})
    assert fused.predictor.slice_score == "fused" and older.predictor.slice_score == "classifier"
    # an ONNX file without metadata takes its threshold from metrics.json, and the rule with it
    bare = export_tiny_onnx(tmp_path / "bare.onnx", metadata={})
    metrics = {"classification": {"threshold": 0.4}, "classification_threshold": {"value": 0.4, "slice_score": "fused"}}
    assert load_served_model(bare, {}, metrics=metrics).predictor.slice_score == "fused"
    assert load_served_model(bare, {}, metrics={"classification": {"threshold": 0.4}}).predictor.slice_score == "classifier"
    bad = export_tiny_onnx(tmp_path / "bad.onnx", metadata=meta | {"slice_score": "loudest"})
    with pytest.raises(SliceWiseError, match="unknown slice score 'loudest'") as failure:
        load_served_model(bad, {})
    assert "bad.onnx" in str(failure.value)
    files = make_served_files(tmp_path)
    export_tiny_onnx(files.onnx, metadata=meta | {"slice_score": "fused"})
    with local_client(file_app(files)) as client:
        assert client.get("/model/info").json()["served"]["slice_score"] == "fused"


def test_a_volume_is_scored_as_the_model_was_evaluated_in_volume_or_alone(tmp_path, monkeypatch):
    """The volume route reads its slice scores after the clean-up only for a model whose evaluation scored its BraTS
    slices that way (model.json `slices_in_volume`, else metrics.json's record); a model judged on slices alone, or one
    from before the key, gets each slice's own score, the one its threshold was chosen on."""
    import serve.inference as serve_inference
    from serve.served_model import load_served_model

    meta = {"image_size": SIZE, "modalities": ["flair"], "threshold": 0.5, "mask_threshold": 0.5,
            "model_config": {"in_channels": 1, "base_channels": 4, "depth": 2}}
    in_volume = load_served_model(export_tiny_onnx(tmp_path / "v.onnx", metadata=meta | {"slices_in_volume": True}), {})
    alone = load_served_model(export_tiny_onnx(tmp_path / "a.onnx", metadata=meta | {"slices_in_volume": False}), {})
    older = load_served_model(export_tiny_onnx(tmp_path / "o.onnx", metadata=meta), {})
    assert (in_volume.slices_in_volume, alone.slices_in_volume, older.slices_in_volume) == (True, False, False)
    bare = export_tiny_onnx(tmp_path / "bare.onnx", metadata={})
    recorded = {"classification": {"threshold": 0.4},
                "classification_threshold": {"value": 0.4, "slices_in_volume": True}}
    assert load_served_model(bare, {}, metrics=recorded).slices_in_volume is True
    assert load_served_model(bare, {}, metrics={"classification": {"threshold": 0.4}}).slices_in_volume is False
    asked = []
    real = serve_inference.predict_volume

    def recording(*args, **kwargs):
        asked.append(kwargs["slices_in_volume"])
        return real(*args, **kwargs)

    monkeypatch.setattr(serve_inference, "predict_volume", recording)
    upload = {"file": ("patient.nii.gz", nifti_bytes(brain_volume()[0])[0])}
    for flag in (True, False):
        (tmp_path / str(flag)).mkdir()
        files = make_served_files(tmp_path / str(flag))
        export_tiny_onnx(files.onnx, metadata=meta | {"slices_in_volume": flag})
        with local_client(file_app(files)) as client:
            assert client.get("/model/info").json()["served"]["slices_in_volume"] is flag
            answer = client.post("/v1/predict/volume", files=upload)
            assert answer.status_code == 200 and answer.json()["scores_after_cleanup"] is flag  # the answer says which
    assert asked == [True, False]


def test_missing_model_file_is_reported_not_served(tmp_path):
    files = make_served_files(tmp_path)
    files.onnx.unlink()
    with local_client(file_app(files)) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["model_loaded"] is False and "no model" in health["detail"]
        response = predict(client, png_bytes(brain_slice()))
        assert response.status_code == 503 and "--model-file" in response.json()["detail"]


def test_a_model_file_that_is_no_model_gets_a_hint_about_the_file_not_the_registry(tmp_path):
    """Review 2026-12-07: `--model-file README.md` answered every request "train and register one (`make run`)"."""
    files = make_served_files(tmp_path)
    files.onnx.write_text("# not a model\n")
    with local_client(file_app(files)) as client:
        detail = client.get("/healthz").json()["detail"]
        assert "no model" in detail and "point --model-file at the ONNX file" in detail and "register" not in detail


# ---------------------------------------------------------------- bad input: a 4xx that names the problem


def nifti_with_shape(shape) -> bytes:
    return nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4)).to_bytes()


def nifti_with_two_voxel_sizes() -> bytes:
    """pixdim says 1 mm, the sform 2 mm apart: the tumour's cm³ would be off by 8x, whichever was wrong."""
    image = nib.Nifti1Image(np.ones((32, 32, 8), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_zooms((1.0, 1.0, 1.0))
    return image.to_bytes()


def tiff_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(brain_slice()).save(buffer, format="TIFF")
    return buffer.getvalue()


BAD_SLICES = [
    ("text", b"hello, I am not an image", 415, "unsupported file type"),
    ("tiff", tiff_bytes(), 415, "unsupported file type"),
    ("nifti to slice route", nifti_with_shape((16, 16, 4)), 415, "unsupported file type"),
    ("empty", b"", 422, "empty"),
    ("truncated png", png_bytes(brain_slice())[:60], 422, "undecodable"),
    ("corrupt jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 200, 422, "undecodable"),
    ("png magic, no png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, 422, "starts as a PNG, but its header"),
    # review 2026-12-07: a PNG whose header checksum is wrong was "Pillow recognises no PNG or JPEG in its bytes"
    ("png, bad header checksum", png_bytes(brain_slice())[:29] + bytes(4) + png_bytes(brain_slice())[33:], 422,
     "starts as a PNG, but its header is damaged"),
    ("corrupt npy", b"\x93NUMPY\x01\x00garbage", 422, "undecodable"),
    ("pickled npy", npy_bytes(np.array([{"a": 1}], dtype=object)), 422, "dtype object"),  # refused by its header
    ("1d npy", npy_bytes(np.zeros(100, np.float32)), 422, "dimensions"),
    ("4d npy", npy_bytes(np.zeros((1, 1, 32, 32), np.float32)), 422, "dimensions"),
    ("wrong channels", npy_bytes(np.zeros((3, 32, 32), np.float32)), 422, "channel"),
    ("channels last", npy_bytes(np.zeros((64, 64, 4), np.float32)), 422, "send (C, H, W)"),
    ("complex npy", npy_bytes(np.zeros((32, 32), np.complex64)), 422, "dtype"),
    ("nan npy", npy_bytes(np.full((32, 32), np.nan, np.float32)), 422, "NaN"),
    ("tiny image", png_bytes(np.zeros((4, 4), np.uint8)), 422, "too small"),
    # float32's extremes of both signs: the brain statistics (float64) fit, but a value minus the mean overflows
    ("huge values", npy_bytes(np.where(np.eye(32, dtype=bool), 3e38, -3e38).astype(np.float32)), 422, "out of range"),
]


@pytest.mark.parametrize(("data", "status", "words"), [b[1:] for b in BAD_SLICES], ids=[b[0] for b in BAD_SLICES])
def test_bad_slices_are_4xx_with_a_reason(client, data, status, words):
    for route, field in (("/v1/predict", "file"), ("/v1/predict/batch", "files")):
        response = client.post(route, files={field: ("upload.bin", data)})
        assert response.status_code == status, response.text
        assert words.lower() in response.json()["detail"].lower()
        assert "object at 0x" not in response.json()["detail"]  # no Python internals in what a client reads


def test_slice_over_the_size_limit_is_413(files):
    with local_client(file_app(files, max_slice_mb=0.01)) as client:
        response = predict(client, npy_bytes(np.zeros((64, 64), np.float32)))  # 16 kB
        assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_image_over_the_side_limit_is_413(files):
    with local_client(file_app(files, max_image_side=64)) as client:
        response = predict(client, png_bytes(np.zeros((65, 70), np.uint8)))
        assert response.status_code == 413 and "64 pixels" in response.json()["detail"]


def test_body_larger_than_the_route_allows_is_refused_before_parsing(files):
    from tests.conftest import traced_peak

    body = b"\x00" * (8 * 1024 * 1024)
    with local_client(file_app(files, max_slice_mb=0.01)) as client:
        response, peak = traced_peak(lambda: predict(client, body))
        assert response.status_code == 413
        assert "request body of 8.00 MB is more than this route takes: one file of at most 0.01 MB" \
            in response.json()["detail"]
    assert peak < 2 * 1024 * 1024  # the 8 MB body was never held whole, let alone parsed


def test_chunked_body_is_counted_as_it_arrives(files):
    def body():  # no Content-Length: the limit must hold while the bytes stream in
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.npy"\r\n\r\n'
        for _ in range(40):
            yield b"\x00" * 65536
        yield b"\r\n--xyz--\r\n"

    with local_client(file_app(files, max_slice_mb=0.5)) as client:
        response = client.post("/v1/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 413
        # review 2026-12-07: "11.0 MB exceeds this route's limit of 11.0 MB" of a 10 MB rule: the rule, not the
        # body's limit (the rule plus the form's overhead), is named
        assert re.fullmatch(r"request body of \d+\.\d\d MB is more than this route takes: one file of at most 0\.5 MB "
                            r"\(serve\.max_slice_mb\)", response.json()["detail"])


def test_too_many_files_is_413(files):
    with local_client(file_app(files, max_batch_files=3)) as client:
        uploads = [("files", (f"s{i}.png", png_bytes(brain_slice()))) for i in range(4)]
        response = client.post("/v1/predict/batch", files=uploads)
        assert response.status_code == 413 and "too many files" in response.json()["detail"]


def test_missing_field_and_bad_query_are_422_sentences(client):
    missing = client.post("/v1/predict")
    assert missing.status_code == 422 and "missing multipart field 'file'" in missing.json()["detail"]
    wrong_field = client.post("/v1/predict", files={"image": ("a.png", png_bytes(brain_slice()))})
    assert wrong_field.status_code == 422
    bad_query = predict(client, png_bytes(brain_slice()), gradcam="maybe")
    assert bad_query.status_code == 422 and "gradcam" in bad_query.json()["detail"]


BAD_VOLUMES = [
    ("png", png_bytes(brain_slice()), 415, "not a NIfTI"),
    ("empty", b"", 422, "empty"),
    ("bad gzip", b"\x1f\x8b\x08\x00" + b"\x01" * 100, 422, "gzip"),
    ("truncated gzip", gzip.compress(nifti_with_shape((16, 16, 4)))[:-20], 422, "truncated"),
    ("2d", nifti_with_shape((32, 32)), 422, "dimensions"),
    ("4d", nifti_with_shape((16, 16, 4, 3)), 422, "dimensions"),
    ("truncated nifti", nifti_with_shape((32, 32, 8))[:2000], 422, "undecodable"),
    ("inf", nib.Nifti1Image(np.full((16, 16, 4), np.inf, np.float32), np.eye(4)).to_bytes(), 422, "infinite"),
    ("two voxel sizes", nifti_with_two_voxel_sizes(), 422,
     "v.nii.gz: the header's voxel size (pixdim) is 1 x 1 x 1 mm but its voxel-to-world transform (sform) puts "
     "voxels 2 x 2 x 2 mm apart"),
]


@pytest.mark.parametrize(("data", "status", "words"), [b[1:] for b in BAD_VOLUMES], ids=[b[0] for b in BAD_VOLUMES])
def test_bad_volumes_are_4xx_with_a_reason(client, data, status, words):
    response = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", data)})
    assert response.status_code == status, response.text
    assert words.lower() in response.json()["detail"].lower()


def test_volume_over_the_size_limit_is_413(files):
    with local_client(file_app(files, max_volume_mb=0.05)) as client:
        response = client.post("/v1/predict/volume", files={"file": ("v.nii", nifti_with_shape((40, 40, 10)))})
        assert response.status_code == 413 and "the limit is 0.05 MB" in response.json()["detail"]


def test_gzip_bomb_is_413(files):
    bomb = gzip.compress(nifti_with_shape((64, 64, 64)))  # ~1 MB inflated from a few kB
    with local_client(file_app(files, max_volume_mb=0.5)) as client:
        response = client.post("/v1/predict/volume", files={"file": ("v.nii.gz", bomb)})
        assert response.status_code == 413 and "decompressed" in response.json()["detail"]


def test_uncertainty_png_is_blank_outside_the_brain_as_the_uncertainty_nifti_is():
    from serve.inference import slice_images

    unsure = np.full((1, SIZE, SIZE), 0.5, np.float32)  # maximal entropy everywhere
    brain = np.zeros((SIZE, SIZE), bool)
    brain[:, : SIZE // 2] = True
    masks = np.zeros((1, SIZE, SIZE), bool)
    masks[0, :4, -4:] = True  # a predicted tumour outside the brain keeps its uncertainty
    alpha = decode_png(slice_images(np.zeros((SIZE, SIZE), np.uint8), unsure, masks, brain)["uncertainty_png"])[..., 3]
    assert (alpha[:, : SIZE // 2] > 0).all() and (alpha[:4, -4:] > 0).all()
    outside = ~brain & ~masks[0]
    assert (alpha[outside] == 0).all()


def test_every_prediction_names_the_model_that_answered(client, files):
    """The champion may change between two requests; the JSON did not say which model computed it. A served file is
    named with its content too: an export replaced by a newer one keeps its name."""
    from tasks.io import sha256_file

    slice_png = png_bytes(brain_slice())
    answers = [client.post("/v1/predict", files={"file": ("a.png", slice_png)}),
               client.post("/v1/predict/batch", files=[("files", (name, slice_png)) for name in ("a.png", "b.png")]),
               client.post("/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(brain_volume()[0])[0])})]
    for response in answers:
        assert response.status_code == 200, response.text[:200]
        assert response.headers["X-SliceWise-Model"] == f"file {files.onnx.name}@{sha256_file(files.onnx)[:12]}"
