"""The web UI in a real headless Chromium (Debian's chromium + chromium-driver, installed by
scripts/install_browser.sh when missing): upload a slice, a batch and a volume, and check that results render.

    SLICEWISE_SCREENSHOT=docs/screenshot-ui.png   also save the Patient view there (the README's screenshot);
                                                 the volume is then a synthetic BraTS-like FLAIR scan
    SLICEWISE_UI_MODEL=champion                   serve the project's registry champion instead of the test's
                                                 stand-in model (or an ONNX file: SLICEWISE_UI_MODEL=exports/model.onnx)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tasks import paths
from tests.serve_factory import (REPO, ServedFiles, brain_slice, brain_volume, make_served_files, nifti_bytes,
                                 png_bytes, running_server)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1000")
WAIT_SECONDS = 60


def ensure_browser() -> None:
    """Install the browser rather than skip: the UI test must run wherever `make test` runs."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        subprocess.run([str(REPO / "scripts" / "install_browser.sh")], check=True, timeout=900)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")  # a fresh profile
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def served_files(folder: Path) -> ServedFiles | None:
    """The test's stand-in model, or what SLICEWISE_UI_MODEL names (None: the registry's champion)."""
    model = os.environ.get("SLICEWISE_UI_MODEL")
    if not model:
        return make_served_files(folder)
    if model == "champion":
        return None
    return ServedFiles(Path(model).resolve(), REPO / paths.best_checkpoint("joint"), REPO / paths.METRICS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    with running_server(served_files(folder), folder / "serve.log") as url:
        yield url


def wait_visible(driver, element_id: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(ec.visibility_of_element_located((By.ID, element_id)))


def wait_text(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS).until(ec.text_to_be_present_in_element((By.ID, element_id), text))


def red_pixels(driver, canvas_id: str) -> int:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 1] + 60) n++; return n;", canvas_id)


def patient_volume(folder: Path) -> Path:
    if os.environ.get("SLICEWISE_SCREENSHOT"):
        from tasks.data.synthetic import synthesize_patient

        volume = synthesize_patient(42, 0)[0]["flair"]
        data, _ = nifti_bytes(volume, spacing=(1.0, 1.0, 1.0))
    else:
        data, _ = nifti_bytes(brain_volume(shape=(64, 64, 16), tumour_box=((14, 26), (36, 50), (5, 11)))[0])
    path = folder / "patient_flair.nii.gz"
    path.write_bytes(data)
    return path


def test_ui_renders_results_for_a_slice_a_batch_and_a_volume(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    slices = []
    for i in range(3):
        slices.append(tmp_path / f"slice_{i}.png")
        slices[-1].write_bytes(png_bytes(brain_slice(size=128, tumour=i != 1)))
    browser.get(server)
    wait_visible(browser, "model-version")
    with urllib.request.urlopen(f"{server}/model/info", timeout=10) as response:
        gradcam = json.load(response)["served"]["gradcam_checkpoint"]
    assert gradcam or os.environ.get("SLICEWISE_UI_MODEL")  # the stand-in model always has its checkpoint

    # Classification, with Grad-CAM where the served model has a torch checkpoint
    if gradcam:
        browser.find_element(By.ID, "cls-gradcam").click()
    browser.find_element(By.ID, "cls-file").send_keys(str(slices[0]))
    wait_visible(browser, "cls-result")
    if gradcam:
        wait_visible(browser, "cls-gradcam-figure")
    assert browser.find_element(By.ID, "cls-probability").text.endswith("%")
    assert browser.find_element(By.ID, "cls-decision").text in {"tumour", "no tumour", "uncertain: out of distribution"}

    # Segmentation: the mask is drawn in red over the slice, and the opacity slider changes it
    browser.find_element(By.ID, "tab-segmentation").click()
    browser.find_element(By.ID, "seg-file").send_keys(str(slices[0]))
    wait_visible(browser, "seg-result")
    if not os.environ.get("SLICEWISE_UI_MODEL"):  # the stand-in model is known to find the bright disc
        assert red_pixels(browser, "seg-canvas") > 0

    # Batch: one row per file, sortable
    browser.find_element(By.ID, "tab-batch").click()
    browser.find_element(By.ID, "batch-files").send_keys("\n".join(str(p) for p in slices))
    wait_visible(browser, "batch-table")
    rows = browser.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")
    assert sorted(r.find_element(By.TAG_NAME, "td").text for r in rows) == [p.name for p in slices]
    browser.find_element(By.CSS_SELECTOR, "#batch-table th[data-key='filename']").click()
    first = browser.find_element(By.CSS_SELECTOR, "#batch-table tbody tr td").text
    assert first in (slices[0].name, slices[-1].name)
    assert browser.find_element(By.ID, "batch-csv").is_enabled()

    # Patient: a volume → tumour volume, slice scrubber, per-slice probability plot
    volume_path = patient_volume(tmp_path)
    browser.find_element(By.ID, "tab-patient").click()
    browser.find_element(By.ID, "vol-file").send_keys(str(volume_path))
    wait_visible(browser, "vol-result")
    wait_text(browser, "vol-volume", "cm³")
    slider = browser.find_element(By.ID, "vol-slider")
    n_slices = int(slider.get_attribute("max")) + 1
    points = browser.find_element(By.CSS_SELECTOR, "#vol-plot polyline").get_attribute("points").split()
    assert len(points) == n_slices > 1
    assert browser.find_element(By.ID, "vol-slice-label").text.startswith(slider.get_attribute("value"))
    if not os.environ.get("SLICEWISE_UI_MODEL"):
        assert red_pixels(browser, "vol-canvas") > 0  # scrubbed to the most likely tumour slice
    assert not browser.find_element(By.ID, "vol-error").is_displayed()

    screenshot = tmp_path / "screenshot-ui.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if target := os.environ.get("SLICEWISE_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)


def test_ui_shows_the_reason_for_a_bad_upload(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is text, not a PNG")
    browser.get(server)
    browser.find_element(By.ID, "cls-file").send_keys(str(bad))
    wait_visible(browser, "cls-error")
    assert "unsupported file type" in browser.find_element(By.ID, "cls-error").text
    assert not browser.find_element(By.ID, "cls-result").is_displayed()
