"""The API as `make serve` runs it: a real uvicorn process on 127.0.0.1 and a free port, real HTTP, and 20
clients at once (a bounded number of requests; the speed targets live in bench/bench_api.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serve_factory import brain_slice, brain_volume, make_served_files, nifti_bytes, npy_bytes, png_bytes, running_server

pytestmark = pytest.mark.slow
CLIENTS = 20
REQUESTS_PER_CLIENT = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("process")
    with running_server(make_served_files(folder), folder / "serve.log") as url:
        yield url


def no_proxy_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through a proxy from the environment
    return session


def test_routes_over_real_http(server):
    http = no_proxy_session()
    assert http.get(f"{server}/healthz", timeout=10).json()["model_loaded"] is True
    assert "SliceWise" in http.get(server, timeout=10).text
    slice_answer = http.post(f"{server}/v1/predict", files={"file": ("a.npy", npy_bytes(brain_slice() * 3.0))},
                             timeout=30).json()
    assert slice_answer["has_tumor"] is True
    volume, _ = brain_volume()
    volume_answer = http.post(f"{server}/v1/predict/volume", files={"file": ("v.nii.gz", nifti_bytes(volume)[0])},
                              timeout=60).json()
    assert volume_answer["tumor_volume_cm3"] > 0
    bad = http.post(f"{server}/v1/predict", files={"file": ("a.txt", b"not an image")}, timeout=10)
    assert bad.status_code == 415 and "unsupported" in bad.json()["detail"]


def test_twenty_concurrent_clients_get_no_errors(server):
    slices = [png_bytes(brain_slice(tumour=i % 2 == 0)) for i in range(4)]

    def client(index: int) -> list[tuple[int, bool | None]]:
        http = no_proxy_session()
        answers = []
        for k in range(REQUESTS_PER_CLIENT):
            if (index + k) % 5 == 4:
                response = http.post(f"{server}/v1/predict/batch", timeout=60,
                                     files=[("files", (f"{j}.png", s)) for j, s in enumerate(slices)])
                decisions = [r["has_tumor"] for r in response.json()]
                answers.append((response.status_code, decisions == [True, False, True, False]))
            else:
                data = slices[(index + k) % 4]
                response = http.post(f"{server}/v1/predict", files={"file": ("s.png", data)}, timeout=60)
                answers.append((response.status_code, response.json()["has_tumor"] == ((index + k) % 4 % 2 == 0)))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [answer for answers in pool.map(client, range(CLIENTS)) for answer in answers]
    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    assert all(status == 200 for status, _ in results), sorted({status for status, _ in results})
    assert all(correct is True for _, correct in results)  # no answer mixed up between concurrent requests


@pytest.mark.parametrize(("argv", "words"), [
    (["--port", "70000"], "--port: Input should be less than or equal to 65535"),
    (["--port", "-1"], "--port: Input should be greater than or equal to 1"),
    (["--poll-seconds", "nan"], "--poll-seconds: Input should be a finite number"),
    (["--poll-seconds", "-5"], "--poll-seconds: Input should be greater than or equal to 0"),
])
def test_command_line_values_are_checked_as_params_yaml_s_are(argv, words, capfd):
    """A port of 70000 was a traceback from bind(); --poll-seconds skipped validation altogether."""
    from serve.__main__ import main
    from tests.conftest import REPO

    assert main([*argv, "--params", str(REPO / "params.yaml")]) != 0
    out = "".join(capfd.readouterr())  # the module's rich console holds the process's own stdout
    assert "error: invalid option" in out and words in out and "Traceback" not in out


def test_a_model_file_that_does_not_exist_stops_the_server_before_it_starts(tmp_path, capfd):
    """It started and answered every request with a 503 whose hint was to pass --model-file, the flag given."""
    from serve.__main__ import main
    from tests.conftest import REPO

    missing = tmp_path / "exports" / "modle.onnx"
    assert main(["--model-file", str(missing), "--params", str(REPO / "params.yaml"), "--port", "1"]) == 1
    out = "".join(capfd.readouterr())
    assert f"error: {missing}: no such ONNX file" in out and "Traceback" not in out
