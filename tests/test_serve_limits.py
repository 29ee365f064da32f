"""Hostile and broken uploads (issue 13): every upload is bounded before it is allocated, and every bad one is a 4xx
with a `detail` naming the file and the reason.

Memory is measured with tracemalloc (numpy and bytearray allocations are traced): a header that lies must cost
what its bytes are, not what it claims.
"""

from __future__ import annotations

import gzip
import io
import struct
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import traced_peak
from tests.serve_factory import (SIZE, brain_slice, brain_volume, file_app, forged_nifti_gz, local_client, make_served_files,
    nifti_bytes, png_bytes, served_in_thread)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_served_files(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def client(files):
    with local_client(file_app(files)) as client:
        yield client


def post_volume(client, data: bytes, name: str = "v.nii.gz"):
    return client.post("/v1/predict/volume", files={"file": (name, data)})


# ---------------------------------------------------------------- finding 1: the header does not decide the allocation


def test_a_header_that_claims_more_than_the_file_holds_allocates_nothing(files):
    """68 bytes of .nii.gz claiming 400×400×400 float32 (256 MB): a 422 before anything of that size exists."""
    bomb = forged_nifti_gz((400, 400, 400))
    assert len(bomb) < 100
    with local_client(file_app(files, max_voxels=10**9, max_volume_mb=1000, memory_budget_mb=4000)) as client:
        response, peak = traced_peak(lambda: post_volume(client, bomb, "bomb.nii.gz"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "bomb.nii.gz" in detail and "truncated or forged" in detail and "400x400x400" in detail
    assert peak < 8 * MB, f"{peak / MB:.0f} MB traced for a 68-byte upload"


def test_the_bomb_of_the_report_is_refused_by_its_header(client):
    """1000×1000×500 float32 in 62 bytes: over serve.max_voxels, judged from the header alone."""
    response, peak = traced_peak(lambda: post_volume(client, forged_nifti_gz((1000, 1000, 500))))
    assert response.status_code == 413 and "serve.max_voxels" in response.json()["detail"]
    assert peak < 8 * MB


@pytest.mark.parametrize("cut", [2, 20, 60])  # of 107 bytes
def test_a_nii_gz_cut_off_inside_its_header_is_called_truncated(client, cut):
    whole = gzip.compress(nib.Nifti1Image(np.ones((32, 32, 4), np.float32), np.eye(4)).to_bytes())
    response = post_volume(client, whole[:cut], "cut.nii.gz")
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("cut.nii.gz: truncated gzip stream")
    # a complete gzip of something else is still not a NIfTI volume
    other = post_volume(client, gzip.compress(b"not a volume" * 10), "other.nii.gz")
    assert other.status_code == 415, other.text


def test_truncated_data_of_a_plain_nifti_is_refused_before_reading(client):
    raw = nib.Nifti1Image(np.ones((256, 256, 64), np.float32), np.eye(4)).to_bytes()  # its header declares 16 MB
    response, peak = traced_peak(lambda: post_volume(client, raw[:4000], "short.nii"))
    assert response.status_code == 422 and "truncated or forged" in response.json()["detail"]
    assert peak < 4 * MB  # nothing of the declared size was allocated


# ---------------------------------------------------------------- finding 2: voxels and slices are limited


@pytest.mark.parametrize(("shape", "dtype", "limit"), [((8, 8, 5000), np.float32, "serve.max_slices"),
                                                       ((4000, 4000, 8), np.uint8, "serve.max_voxels")],
                         ids=["8x8x5000", "4000x4000x8"])
def test_volumes_beyond_the_voxel_or_slice_limit_are_413_at_once(client, shape, dtype, limit):
    data = forged_nifti_gz(shape, dtype, data_bytes=int(np.prod(shape)) * np.dtype(dtype).itemsize)
    assert len(data) < 200_000  # the small uploads of the report: 1 KB and 124 KB
    response, peak = traced_peak(lambda: post_volume(client, data))
    assert response.status_code == 413, response.text
    assert limit in response.json()["detail"]
    assert peak < 8 * MB


def test_the_slice_limit_counts_the_axial_axis_whichever_axis_stores_it(client):
    """8×5000×8 whose second stored axis runs inferior-superior: 5000 axial slices (it is sliced along that axis),
    over serve.max_slices, though its third axis holds 8; and 8×8×5000 stored so holds 8 slices of 8×5000."""
    superior_second = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # x R, y S, z A
    data = forged_nifti_gz((8, 5000, 8), np.uint8, data_bytes=8 * 5000 * 8, affine=superior_second)
    response = post_volume(client, data)
    assert response.status_code == 413, response.text
    assert "5000 axial slices" in response.json()["detail"] and "serve.max_slices" in response.json()["detail"]
    from serve.volumes import probe_volume

    upload = probe_volume(io.BytesIO(forged_nifti_gz((8, 8, 5000), np.uint8, data_bytes=8 * 8 * 5000,
                                                     affine=superior_second)), "v.nii.gz", 64, 10**6, 512)
    assert upload.header.axial_shape == (8, 5000, 8)


def wait_for_release(budget, seconds: float = 10) -> None:
    """Wait until `budget` holds nothing (at most `seconds`). An answer's memory is released once its last piece is
    handed to the connection (serve/responses.py PacedAnswer), which the server's event loop may do just after the
    client has read that piece."""
    deadline = time.monotonic() + seconds
    while budget.in_use and time.monotonic() < deadline:
        time.sleep(0.05)


def test_concurrent_volumes_share_the_memory_budget(files):
    """More volumes at once than the budget holds: they take turns (all 200), and the reservations in flight never
    exceed the budget; a volume that alone needs more than the budget is a 413 that names the setting."""
    volume, _ = brain_volume(shape=(96, 96, 24), tumour_box=((30, 50), (40, 60), (8, 16)))
    data, _ = nifti_bytes(volume)
    app = file_app(files, memory_budget_mb=20, queue_seconds=120)
    with served_in_thread(app, _cfg()) as url:
        def send(_: int) -> int:
            session = requests.Session()
            session.trust_env = False
            return session.post(f"{url}/v1/predict/volume", files={"file": ("v.nii.gz", data)}, timeout=300).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(send, range(6)))
        budget = app.state.budget
        assert statuses == [200] * 6
        wait_for_release(budget)
        assert 0 < budget.peak <= budget.total and budget.in_use == 0
        big = forged_nifti_gz((256, 256, 64), np.float32, data_bytes=256 * 256 * 64 * 4)
        session = requests.Session()
        session.trust_env = False
        refused = session.post(f"{url}/v1/predict/volume", files={"file": ("big.nii.gz", big)}, timeout=60)
        assert refused.status_code == 413 and "serve.memory_budget_mb" in refused.json()["detail"]


def _cfg(**changes):
    from tasks.config import load_settings
    from tests.serve_factory import REPO

    return load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0, **changes})


def test_a_slice_waits_for_the_budget_then_gets_a_503(files):
    """While the budget is taken, a request waits `serve.queue_seconds`, then is told to come back (503)."""
    app = file_app(files, queue_seconds=0.2)
    with local_client(app) as client:
        budget = app.state.budget
        with budget.reserve(budget.total, "everything"):
            response = client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice()))})
        assert response.status_code == 503 and "busy" in response.json()["detail"]
        assert client.post("/v1/predict", files={"file": ("s.png", png_bytes(brain_slice()))}).status_code == 200


# ---------------------------------------------------------------- finding 3: a degenerate affine is a 422 before inference


def nan_qform() -> dict:
    return {"qform_code": 1, "sform_code": 0, "quatern_b": np.nan}


@pytest.mark.parametrize("rank", [9, -3, 0])
def test_a_header_whose_dim0_is_out_of_range_is_named_not_read_byte_swapped(client, rank):
    """nibabel takes a dim[0] outside 0-7 for a byte-swapped header and fails on another field; the answer names
    dim[0] (0 too: a volume of no dimensions)."""
    data = bytearray(gzip.decompress(forged_nifti_gz((32, 32, 6), data_bytes=32 * 32 * 6 * 4)))
    data[40:42] = struct.pack("<h", rank)
    response = post_volume(client, gzip.compress(bytes(data)), "rank.nii.gz")
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (f"rank.nii.gz: the header's dim[0] (how many dimensions the volume has) is "
                                         f"{rank}; NIfTI allows 1 to 7")


def test_a_big_endian_header_is_still_read():
    from serve.volumes import probe_volume, read_volume

    header = nib.Nifti1Header(endianness=">")
    header.set_data_shape((32, 32, 6))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    data = (np.arange(32 * 32 * 6) % 1000).astype(">i2").reshape((32, 32, 6), order="F")  # no byte-symmetric value
    body = header.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    upload = probe_volume(io.BytesIO(body), "big.nii", 10, 10**6, 512)
    assert upload.header.shape == (32, 32, 6)
    volume, _ = read_volume(upload)
    np.testing.assert_array_equal(volume, data.astype(np.float32))  # read in its own byte order


@pytest.mark.parametrize("changes", [
    {"srow_x": [np.nan, 0, 0, 0]},                                              # NaN sform
    {"srow_x": [0, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 0, 0]},  # all-zero sform
    nan_qform(),                                                               # NaN qform
    {"srow_x": [1, 0, 0, np.nan], "srow_y": [0, 1, 0, 0], "srow_z": [0, 0, 1, 0]},  # NaN offset only
], ids=["nan-sform", "zero-sform", "nan-qform", "nan-offset"])
def test_degenerate_affine_is_422_before_inference(files, changes):
    shape = (32, 32, 6)
    data = forged_nifti_gz(shape, data_bytes=32 * 32 * 6 * 4, header_changes=changes)
    app = file_app(files)
    with local_client(app) as client:
        predictor = app.state.holder.model.predictor
        calls = []
        original = predictor.predict
        predictor.predict = lambda images: calls.append(len(images)) or original(images)
        try:
            response = post_volume(client, data, "tilted.nii.gz")
        finally:
            predictor.predict = original
    assert response.status_code == 422, response.text
    assert "tilted.nii.gz" in response.json()["detail"] and "affine" in response.json()["detail"]
    if "srow_z" in changes and np.isnan(changes["srow_x"][3]):  # the NaN shown, not only the finite 3x3 part
        assert "nan" in response.json()["detail"]  # review 2026-12-07
    assert calls == []  # refused before any inference ran


# ---------------------------------------------------------------- finding 10: gzip members, names in batch errors


def test_multi_member_gzip_volume_is_accepted(client):
    volume, _ = brain_volume()
    raw = nib.Nifti1Image(volume, np.diag([1.0, 1.5, 2.0, 1.0])).to_bytes()
    single = post_volume(client, gzip.compress(raw)).json()
    multi = post_volume(client, gzip.compress(raw[:1000]) + gzip.compress(raw[1000:5000]) + gzip.compress(raw[5000:]))
    assert multi.status_code == 200, multi.text
    assert multi.json()["tumor_slices"] == single["tumor_slices"] == [4, 5, 6]
    assert multi.json()["tumor_volume_cm3"] == single["tumor_volume_cm3"]


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")  # bgzip's last, empty member


def test_a_small_bgzip_volume_with_its_end_of_file_member_is_accepted(client):
    volume = np.zeros((16, 16, 3), np.uint8)  # 768 bytes of data: one data member, then bgzip's empty one
    volume[4:12, 4:12] = 200
    packed = gzip.compress(nib.Nifti1Image(volume, np.eye(4)).to_bytes())
    response = post_volume(client, packed + BGZF_EOF)
    assert response.status_code == 200, response.text
    plain = post_volume(client, packed).json()  # the same volume without the empty member: the same answer
    answer = response.json()
    assert (answer["tumor_slices"], answer["tumor_volume_cm3"]) == (plain["tumor_slices"], plain["tumor_volume_cm3"])
    assert answer["ood_score"] == plain["ood_score"]


def test_a_corrupt_second_gzip_member_is_a_422(client):
    volume, _ = brain_volume()
    raw = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    second = bytearray(gzip.compress(raw[1000:]))
    second[-6] ^= 0xFF  # the member's CRC no longer matches
    response = post_volume(client, gzip.compress(raw[:1000]) + bytes(second))
    assert response.status_code == 422 and "gzip" in response.json()["detail"]


def test_a_bad_file_in_a_batch_answers_in_its_place_and_the_others_are_predicted(files):
    """Bad input loses nothing already done: 2 good slices of 4 are answered, each failure names its file."""
    good = png_bytes(brain_slice())
    uploads = [("files", ("a.png", good)), ("files", ("notes.txt", b"just some text")),
               ("files", ("b.png", good)), ("files", ("cut.png", good[:60]))]
    with local_client(file_app(files)) as client:
        response = client.post("/v1/predict/batch", files=uploads)
        alone = client.post("/v1/predict", files={"file": ("a.png", good)}).json()
        budget = client.app.state.budget
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["filename"] for a in answers] == ["a.png", "notes.txt", "b.png", "cut.png"]
    assert answers[1]["status"] == 415 and answers[1]["error"].startswith("notes.txt: unsupported file type")
    assert answers[3]["status"] == 422 and answers[3]["error"].startswith("cut.png: ")
    assert "tumor_probability" not in answers[1] and "error" not in answers[0]
    assert answers[0]["tumor_probability"] == answers[2]["tumor_probability"] == alone["tumor_probability"]
    assert budget.in_use == 0  # what the bad files took of the budget is given back with the rest


def test_a_batch_whose_files_all_fail_is_refused_naming_each(client):
    one = client.post("/v1/predict/batch", files=[("files", ("notes.txt", b"text"))])
    assert one.status_code == 415 and one.json()["detail"].startswith("notes.txt: unsupported file type")
    same = client.post("/v1/predict/batch", files=[("files", (n, b"text")) for n in ("a.txt", "b.txt")])
    assert same.status_code == 415 and "none of the 2 files" in same.json()["detail"]
    mixed = client.post("/v1/predict/batch", files=[("files", ("a.txt", b"text")), ("files", ("e.png", b""))])
    detail = mixed.json()["detail"]
    assert mixed.status_code == 422 and "a.txt: unsupported" in detail and "e.png: the file is empty" in detail


def test_a_batch_over_the_body_limits_still_fails_as_a_whole(files):
    with local_client(file_app(files, max_slice_mb=0.01)) as client:  # a 16 kB file over the 10 kB file limit
        uploads = [("files", ("a.png", png_bytes(brain_slice()))), ("files", ("big.npy", b"\x93NUMPY" * 3000))]
        response = client.post("/v1/predict/batch", files=uploads)
    assert response.status_code == 413, response.text


# ---------------------------------------------------------------- finding 6: batch limits hold while the body streams


def multipart_head(boundary: bytes, name: str) -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="' + name.encode()
            + b'"\r\nContent-Type: image/png\r\n\r\n')


def answer_while_sending(url: str, parts, boundary: bytes = b"xyzBOUNDARY") -> tuple[int, str, int]:
    """POST a chunked multipart body part by part over a raw socket, reading for an answer between parts.
    Returns (status, body, how many parts were sent before the answer came)."""
    import json
    import socket
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /v1/predict/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n")
        sent = 0
        sock.setblocking(False)
        answer = b""
        for chunk in parts:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            for start in range(0, len(chunk), 65536):
                piece = chunk[start:start + 65536]
                try:
                    sock.setblocking(True)
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                except (BrokenPipeError, ConnectionResetError):
                    break
                finally:
                    sock.setblocking(False)
            sent += 1
            threading.Event().wait(0.05)
        sock.setblocking(True)
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
            block = sock.recv(65536)
            if not block:
                break
            answer += block
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body.decode().strip().split("\r\n")[0])["detail"], sent


def test_batch_over_the_file_count_is_refused_while_the_body_streams(files):
    cfg = _cfg(max_batch_files=3)
    with served_in_thread(file_app(files, max_batch_files=3), cfg) as url:
        png = png_bytes(brain_slice())
        parts = [multipart_head(b"xyzBOUNDARY", f"s{i}.png") + png + b"\r\n" for i in range(40)]
        status, detail, sent = answer_while_sending(url, parts)
    assert status == 413 and "too many files" in detail
    assert sent < 10, f"the answer came only after {sent} of 40 parts"


def test_batch_file_over_the_size_limit_is_refused_while_it_streams(files):
    cfg = _cfg(max_slice_mb=1)
    with served_in_thread(file_app(files, max_slice_mb=1), cfg) as url:
        huge = [multipart_head(b"xyzBOUNDARY", "huge.npy")] + [b"\0" * (256 * 1024)] * 40  # 10 MB in 40 pieces
        status, detail, sent = answer_while_sending(url, huge)
    assert status == 413 and "huge.npy" in detail and "1 MB per file" in detail
    assert sent < 15, f"the answer came only after {sent} of 41 pieces"


def test_a_batch_keeps_its_prepared_slices_in_the_budget_while_the_rest_of_its_body_is_awaited(files):
    """Prepared slices wait for the rest of the batch (up to serve.body_timeout_seconds): they must be counted in
    the memory budget meanwhile, or clients that hold back their last file take memory no budget sees."""
    import socket
    from urllib.parse import urlsplit

    app = file_app(files)
    png = png_bytes(brain_slice())
    parts = [multipart_head(b"xyzBOUNDARY", f"s{i}.png") + png + b"\r\n" for i in range(5)]
    with served_in_thread(app, _cfg()) as url:
        budget = app.state.budget
        with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=30) as sock:
            sock.sendall(b"POST /v1/predict/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=xyzBOUNDARY\r\n\r\n")
            for part in parts[:4]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            deadline = time.monotonic() + 20  # a part is complete when the next one's boundary arrives: three are
            while budget.in_use < 3 * SIZE * SIZE * 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            waiting = budget.in_use
            rest = parts[4] + b"--xyzBOUNDARY--\r\n"
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert waiting >= 3 * SIZE * SIZE * 4  # three prepared (1, 32, 32) float32 inputs of the served model
        wait_for_release(budget)
        assert budget.in_use == 0


def test_a_volume_answer_stays_in_the_budget_until_it_is_sent(files):
    """The answer's JSON (megabytes of base64 NIfTI) is made within the volume's reservation and its bytes stay
    budgeted until sent: with a client that does not read, they are still counted."""
    import socket
    from urllib.parse import urlsplit

    volume, _ = brain_volume(shape=(256, 256, 96), tumour_box=((60, 120), (80, 140), (20, 60)))
    noisy = volume + np.random.default_rng(0).integers(0, 400, volume.shape) * (volume > 0)  # a noisy answer: MBs
    data, _ = nifti_bytes(noisy.astype(np.int16))
    app = file_app(files, memory_budget_mb=4000)
    boundary = b"volBOUNDARY"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="v.nii.gz"\r\n'
            b"Content-Type: application/gzip\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    with served_in_thread(app, _cfg()) as url:
        budget = app.state.budget
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            sock.settimeout(60)
            sock.connect((urlsplit(url).hostname, urlsplit(url).port))
            sock.sendall(b"POST /v1/predict/volume?images=true HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nContent-Type: multipart/form-data; boundary=" + boundary
                         + b"\r\n\r\n" + body)
            deadline = time.monotonic() + 60  # answered, but not read: the body waits in the server's buffers
            while (budget.peak == 0 or budget.in_use == budget.peak) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the volume's reservation shrinks to what its answer holds
            time.sleep(1)
            held_while_unread = budget.in_use
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            length = int(received.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            head = received.split(b"\r\n\r\n", 1)[0]
            got = len(received) - len(head) - 4
            while got < length:
                block = sock.recv(1 << 20)
                if not block:
                    break
                got += len(block)
        assert head.startswith(b"HTTP/1.1 200") and got == length
        assert held_while_unread > 0 and held_while_unread <= length, (held_while_unread, length, budget.peak)
        wait_for_release(budget)
        assert budget.in_use == 0


def test_a_batch_is_not_refused_for_counting_its_own_inputs_twice(files):
    """The prepared inputs a batch holds are part of what its inference needs: a batch whose inference fits the
    budget runs on an idle server, instead of waiting for budget it holds itself and ending in a 503."""
    from serve.inference import inference_bytes
    from serve.uploads import HEAD_BYTES, slice_memory_bytes

    n, png = 20, png_bytes(brain_slice())
    with local_client(file_app(files)) as client:
        model = client.app.state.holder.model
    held = n * model.in_channels * model.image_size ** 2 * 4
    decode = slice_memory_bytes(png[:HEAD_BYTES], len(png), "s.png", 4096)
    budget_bytes = max(inference_bytes(model, n), held + decode) + held // 2
    app = file_app(files, memory_budget_mb=budget_bytes / MB, queue_seconds=2)
    with local_client(app) as client:
        answer = client.post("/v1/predict/batch", files=[("files", (f"s{i}.png", png)) for i in range(n)])
        assert answer.status_code == 200, answer.text
        assert app.state.budget.in_use == 0


def test_a_client_that_never_reads_its_volume_answer_loses_it_after_the_deadline(files):
    """serve.answer_timeout_seconds: the answer's share of the budget is not held for as long as a silent client
    keeps its connection open; the connection is dropped and the budget given back."""
    import socket
    from urllib.parse import urlsplit

    volume, _ = brain_volume(shape=(256, 256, 96), tumour_box=((60, 120), (80, 140), (20, 60)))
    noisy = volume + np.random.default_rng(0).integers(0, 400, volume.shape) * (volume > 0)
    data, _ = nifti_bytes(noisy.astype(np.int16))
    app = file_app(files, memory_budget_mb=4000, answer_timeout_seconds=2)
    body = (b'--vb\r\nContent-Disposition: form-data; name="file"; filename="v.nii.gz"\r\n\r\n' + data
            + b"\r\n--vb--\r\n")
    with served_in_thread(app, _cfg(answer_timeout_seconds=2)) as url:
        budget = app.state.budget
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(60)
            sock.connect((urlsplit(url).hostname, urlsplit(url).port))
            sock.sendall(b"POST /v1/predict/volume?images=true HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nContent-Type: multipart/form-data; boundary=vb\r\n\r\n"
                         + body)
            deadline = time.monotonic() + 60
            while budget.peak == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            deadline = time.monotonic() + 30  # never reading: released once answer_timeout_seconds have passed
            while budget.in_use and time.monotonic() < deadline:
                time.sleep(0.1)
            assert budget.in_use == 0 and budget.peak > 0


# ---------------------------------------------------------------- review 2026-12-02: headers that lie, cut bodies


def npy_with_header(header: str, payload: bytes = b"\0" * 64) -> bytes:
    """An NPY v1.0 file with the given header dict text (padded as numpy pads it) and `payload` as data."""
    text = header.encode("latin-1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


@pytest.mark.parametrize("header, expected", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000, 8), }", 413),  # 596 GiB declared
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64, 64), }", 422),  # 16 KB declared, 64 bytes held
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (64, 64),", 422),  # the dict is not closed
    # channels beyond the memory budget, in a file that cannot hold them: a forged file (422), not a large one (413)
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 64, 64), }", 422),
])
def test_an_npy_header_is_judged_before_numpy_allocates_it(client, header, expected):
    response = client.post("/v1/predict", files={"file": ("forged.npy", npy_with_header(header))})
    assert response.status_code == expected, response.text
    assert response.json()["detail"].startswith("forged.npy: ")


def test_an_npy_header_holding_code_is_refused_in_words_not_a_python_repr(client):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').getpid(), }"
    response = client.post("/v1/predict", files={"file": ("code.npy", npy_with_header(header))})
    assert response.status_code == 422
    assert response.json()["detail"] == ("code.npy: undecodable NPY file (its header holds an expression where numpy "
                                         "expects plain values)")


def nifti2_header(shape: tuple[int, ...]) -> bytes:
    """A NIfTI-2 header (540 bytes + 4 of 'no extensions') declaring `shape` int16, with no voxel data."""
    header = nib.Nifti2Header()
    header.set_data_dtype(np.int16)
    header["dim"][: len(shape) + 1] = [len(shape), *shape]
    header["vox_offset"] = 544
    return header.binaryblock + b"\0" * 4


def test_nifti2_dimensions_whose_product_overflows_are_a_413(client):
    response = post_volume(client, nifti2_header((2**32, 2**32, 1)), "big.nii")
    assert response.status_code == 413 and "serve.max_voxels" in response.json()["detail"], response.text


def test_thousands_of_empty_gzip_members_are_refused_quickly(client):
    """A valid .nii.gz followed by 200,000 empty gzip members: inflating nothing must not hold a worker for seconds
    (it took 4.6 s before members were counted)."""
    volume, _ = brain_volume()
    data = gzip.compress(nib.Nifti1Image(volume, np.eye(4)).to_bytes()) + gzip.compress(b"") * 200_000
    started = time.perf_counter()
    response = post_volume(client, data)
    assert response.status_code == 422 and "gzip members" in response.json()["detail"], response.text
    assert time.perf_counter() - started < 30  # a bound, not a benchmark: the refusal comes after a few members


def multipart_body(files: list[tuple[str, str, bytes]], boundary: bytes = b"BB") -> bytes:
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; filename="'
             + name.encode() + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n"
             for field, name, data in files]
    return b"".join(parts) + b"--" + boundary + b"--\r\n"


def test_a_multipart_body_cut_short_is_a_422_not_fewer_files(client):
    slices = [("files", f"{c}.png", png_bytes(brain_slice())) for c in "abc"]
    body = multipart_body(slices)
    headers = {"Content-Type": "multipart/form-data; boundary=BB"}
    whole = client.post("/v1/predict/batch", content=body, headers=headers)
    assert whole.status_code == 200 and [r["filename"] for r in whole.json()] == ["a.png", "b.png", "c.png"]
    cut_in_a_file = body[: body.index(b'filename="c.png"') + 200]
    for cut in (cut_in_a_file, body[: -len(b"--BB--\r\n")]):  # inside c.png's bytes; only the closing line missing
        response = client.post("/v1/predict/batch", content=cut, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("c.png: upload truncated"), response.text


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/volume"])
def test_a_multipart_boundary_too_long_to_parse_is_a_422(client, route):
    """python-multipart refuses boundaries over 256 bytes when the parser is made, outside the parse errors the
    routes turned into 422s: that was a 500."""
    boundary = b"b" * 1000
    body = multipart_body([("file", "x.png", png_bytes(brain_slice()))], boundary)
    response = client.post(route, content=body,
                           headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})
    assert response.status_code == 422, response.text
    assert "malformed multipart body" in response.json()["detail"]


@pytest.mark.parametrize("gzipped", [True, False])
def test_bytes_before_vox_offset_are_read_past_not_held(gzipped):
    """A header may put its voxels far past the header (vox_offset: extensions, or padding a forged header asks
    for). The budget reserves the voxels only, so reading must not keep the bytes before them: 16 MB of padding
    before 2 KB of voxels once cost 16 MB outside the budget."""
    import io

    from serve.volumes import probe_volume, read_volume

    offset = 16 * 1024 * 1024
    volume = (np.random.default_rng(0).random((16, 16, 2)) * 100).astype(np.float32)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header.set_data_offset(offset)
    header = image.header.binaryblock + b"\0\0\0\0"
    data = header + b"\0" * (offset - len(header)) + volume.tobytes(order="F")
    if gzipped:
        data = gzip.compress(data, compresslevel=1)
    upload = probe_volume(io.BytesIO(data), "padded.nii.gz" if gzipped else "padded.nii", 64, 10**6, 512)
    tracemalloc.start()
    try:
        read, _ = read_volume(upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(read, volume)
    assert peak < offset / 4, f"read_volume held {peak:,} bytes for {volume.nbytes:,} bytes of voxels"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grayscale pixels and holds none: what Image.open reads."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 14_000])
def test_an_image_over_the_side_limit_is_413_whichever_check_meets_it_first(client, side):
    """14000x14000 (216 bytes) met Pillow's own bomb check first: a 422 calling a valid header "undecodable",
    where 10000x10000 got the documented 413."""
    response = client.post("/v1/predict", files={"file": ("huge.png", _png_header_only(side, side))})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert detail.startswith("huge.png: ") and detail.endswith("the limit is 4096 pixels per side")
    if side == 14_000:
        assert "196,000,000 pixels" in detail


def test_the_volume_estimate_covers_the_native_plane_temporaries():
    """A 4096x4096x1 volume reserved 353 MB and peaked 256 MB above it: each slice's probabilities are resized to the
    input's plane and turned into a mask and an entropy there, temporaries the estimate did not count."""
    from serve.volumes import BYTES_PER_PLANE_PIXEL
    from tasks.inference.volume import to_volume_grid

    side = 2048
    probability = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    _, peak = traced_peak(lambda: to_volume_grid(probability, (side, side, 1)))
    assert peak <= BYTES_PER_PLANE_PIXEL * side * side, peak / (side * side)


def test_a_voxel_offset_beyond_any_allowed_volume_is_named_for_what_it_is(client):
    """vox_offset = 1e30 said "the header declares 0.3 MB of voxel data; the limit is 300 MB once decompressed"."""
    image = nib.Nifti1Image(np.ones((64, 64, 20), np.float32), np.eye(4))
    raw = bytearray(image.to_bytes())
    raw[108:112] = np.float32(1e30).tobytes()  # vox_offset, a float32 at byte 108 of a NIfTI-1 header
    response = post_volume(client, bytes(raw), "voxoff_huge.nii")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("voxoff_huge.nii: the header puts the voxel data at byte ") and "(vox_offset)" in detail


def test_a_jpeg_with_large_metadata_reserves_for_its_own_size_not_the_largest_allowed():
    """Review 2026-12-07: a 512² camera JPEG with 64 KB of metadata (an ICC profile, EXIF) before its frame header was
    judged as 4096² (448 MB instead of 7 MB of the budget): four such photos filled a 2 GB budget."""
    import io

    from PIL import Image

    from serve.uploads import HEAD_BYTES, jpeg_dimensions, slice_memory_bytes

    buffer = io.BytesIO()
    Image.fromarray(brain_slice(size=512)).save(buffer, format="JPEG", icc_profile=bytes(70_000))
    data = buffer.getvalue()
    assert data.index(b"\xff\xc0") > HEAD_BYTES  # the frame header lies beyond the head
    assert jpeg_dimensions(io.BytesIO(data)) == (512, 512)
    judged = slice_memory_bytes(data[:HEAD_BYTES], len(data), "p.jpg", 4096, io.BytesIO(data))
    largest = slice_memory_bytes(data[:HEAD_BYTES], len(data), "p.jpg", 4096)  # without the file: the old judgement
    assert judged < 20 * 1024**2 < 400 * 1024**2 < largest
    assert jpeg_dimensions(io.BytesIO(b"\xff\xd8\xff\xe1\x00")) is None  # cut short: not judged, no error


def test_a_file_name_over_the_part_header_limit_is_said_so(client):
    """Review 2026-12-07: a file name of 9 KB was "malformed multipart body (Maximum header size exceeded)", naming
    neither the part nor what to change."""
    response = client.post("/v1/predict", files={"file": ("x" * 9000 + ".png", png_bytes(brain_slice()))})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("a part's header line is over 8 KB (a file name that long?)")
