"""Kaggle credentials are checked before anything is imported; archives are extracted without zip-slip."""

import subprocess
import sys
import zipfile

import pytest

from tasks.data.kaggle_download import credentials_source, safe_extract
from tasks.errors import CredentialsError, SliceWiseError


def test_missing_credentials_raise_with_help(tmp_path):
    with pytest.raises(CredentialsError) as info:
        credentials_source(env={}, home=tmp_path)
    assert "KAGGLE_USERNAME" in str(info.value) and "kaggle.json" in str(info.value)
    assert info.value.exit_code == 2


def test_credentials_source_never_reveals_the_key(tmp_path):
    source = credentials_source(env={"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "s3cr3t-key"}, home=tmp_path)
    assert "s3cr3t-key" not in source
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "me", "key": "s3cr3t-key"}')
    assert credentials_source(env={}, home=tmp_path).endswith("kaggle.json")


@pytest.mark.parametrize("name", ["access_token", "access_token.txt", "credentials.json"])
def test_kaggles_newer_token_files_are_credentials_too(tmp_path, name):
    """The pinned kaggle package also signs in with ~/.kaggle/access_token (what Kaggle's API page now hands out)
    and with `kaggle auth login`'s credentials.json; refusing them up front stopped users who followed Kaggle."""
    with pytest.raises(CredentialsError, match="access_token"):
        credentials_source(env={}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / name).write_text("KGAT_s3cr3t")
    source = credentials_source(env={}, home=tmp_path)
    assert source.endswith(name) and "s3cr3t" not in source


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_zip_slip_member_is_refused_and_nothing_extracted(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr(member, "evil")
    target = tmp_path / "out"
    with pytest.raises(SliceWiseError, match="refusing to extract"):
        safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists()
    assert not (target / "good.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SliceWiseError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before writing


def test_safe_archive_extracts(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("brain_tumor_dataset/yes/Y1.jpg", "x")
    assert safe_extract(archive, tmp_path / "out") == 1
    assert (tmp_path / "out" / "brain_tumor_dataset" / "yes" / "Y1.jpg").exists()


def damaged_archive(path, how: str) -> None:
    """A zip whose member cannot be read: deflate data overwritten, an encrypted flag, or Deflate64 (method 9)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("brain_tumor_dataset/yes/Y1.jpg", bytes(range(256)) * 64)
    data = bytearray(path.read_bytes())
    header = 30 + len("brain_tumor_dataset/yes/Y1.jpg")  # the local header, then the compressed data
    central = data.rindex(b"PK\x01\x02")
    if how == "deflate":
        data[header:header + 16] = b"\xff" * 16
    elif how == "encrypted":
        data[6] |= 1  # general purpose flag bit 0, in the local and the central header
        data[central + 8] |= 1
    else:
        data[8], data[central + 10] = 9, 9  # compression method: Deflate64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["deflate", "encrypted", "deflate64"])
def test_an_archive_zipfile_cannot_read_is_one_error_that_says_to_download_again(tmp_path, how):
    """zlib.error, RuntimeError and NotImplementedError were tracebacks, and the archive, kept as complete, made every
    rerun repeat them."""
    archive = tmp_path / "damaged.zip"
    damaged_archive(archive, how)
    with pytest.raises(SliceWiseError, match="not a usable zip archive .*delete it to download again") as error:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(error.value)


def test_an_archive_that_fails_to_extract_leaves_no_part_extraction_behind(tmp_path):
    """The error says to download again; what was extracted before it (many GB of BraTS) was left beside the zip."""
    from tasks.data.kaggle_download import extracted_archive

    archive = tmp_path / "brain-mri.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:  # one good member extracted before a bad one
        zf.writestr("brain_tumor_dataset/no/N1.jpg", bytes(range(256)) * 64)
        zf.writestr("brain_tumor_dataset/yes/Y1.jpg", bytes(range(256)) * 64)
        second = zf.getinfo("brain_tumor_dataset/yes/Y1.jpg")
    data = bytearray(archive.read_bytes())
    start = second.header_offset + 30 + len(second.filename)
    data[start:start + 16] = b"\xff" * 16
    archive.write_bytes(bytes(data))
    with pytest.raises(SliceWiseError, match="not a usable zip archive"):
        extracted_archive(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain-mri.zip"]


def test_a_new_version_of_the_archive_is_extracted_again_into_a_fresh_folder(tmp_path):
    """Kaggle downloads a data set's new version over the same .zip: the old extraction's marker must not keep the
    old files, and none of them may mix with the new version's."""
    from tasks.data.kaggle_download import extracted_archive

    archive = tmp_path / "brain-mri-images-for-brain-tumor-detection.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("yes/Y1.jpg", "old")
        zf.writestr("no/N1.jpg", "old")
    folder = extracted_archive(archive)
    assert (folder / "yes" / "Y1.jpg").read_text() == "old"
    marker_time = (folder / ".extracted").stat().st_mtime_ns
    assert extracted_archive(archive) == folder and (folder / ".extracted").stat().st_mtime_ns == marker_time

    with zipfile.ZipFile(archive, "w") as zf:  # the new version: other content, one file gone
        zf.writestr("yes/Y1.jpg", "new version")
    assert extracted_archive(archive) == folder
    assert (folder / "yes" / "Y1.jpg").read_text() == "new version" and not (folder / "no" / "N1.jpg").exists()

    (folder / ".extracted").write_text("")  # an older version's empty marker, written after the archive: kept
    (folder / "yes" / "Y1.jpg").write_text("already extracted")
    assert extracted_archive(archive) == folder and (folder / "yes" / "Y1.jpg").read_text() == "already extracted"
    assert (folder / ".extracted").read_text() != ""  # upgraded to the archive's identity


def test_fetch_cli_without_credentials_prints_one_line_and_exits_2(tmp_path):
    params = tmp_path / "params.yaml"
    original = (__import__("pathlib").Path(__file__).parents[1] / "params.yaml").read_text()
    params.write_text(original.replace("source: synthetic", "source: kaggle"))
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "KAGGLE_KEY": ""}
    proc = subprocess.run([sys.executable, "-m", "tasks", "fetch", "--params", str(params)], cwd=tmp_path,
                          env=env | {"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "KAGGLE_USERNAME" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- issue 13: archive limits, network failures


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"zeros{i}.bin", b"\0" * (4 * 1024 * 1024))  # 12 MB that compress to a few kB
    assert archive.stat().st_size < 100_000
    with pytest.raises(SliceWiseError, match=r"refusing to extract 12.0 MB \(at most 8.0 MB: MAX_EXTRACTED_BYTES.*zip bomb"):
        safe_extract(archive, tmp_path / "out", max_bytes=8 * 1024 * 1024)
    assert not (tmp_path / "out").exists()


def test_too_many_members_are_refused(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(30):
            zf.writestr(f"f{i}.txt", "x")
    with pytest.raises(SliceWiseError, match="refusing to extract 30 members.*MAX_ARCHIVE_MEMBERS"):
        safe_extract(archive, tmp_path / "out", max_members=20)
    assert not (tmp_path / "out").exists()


def test_an_archive_larger_than_the_free_disk_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.bin", b"\0" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 500, 500))
    with pytest.raises(SliceWiseError, match="free some space"):
        safe_extract(archive, tmp_path / "out")


FAKE_KAGGLE = '''
import requests
import urllib3


class KaggleApi:
    def authenticate(self):
        pass

    def dataset_status(self, dataset, **kwargs):  # asked first, for the latest version's number
        unreachable("/api/v1/datasets/status/" + dataset)

    def dataset_download_files(self, dataset, **kwargs):
        unreachable("/api/v1/datasets/download/" + dataset)


def unreachable(url):
    # what requests raises without a network: a ConnectionError wrapping urllib3's retries and DNS failure
    pool = urllib3.HTTPSConnectionPool("api.kaggle.com", 443)
    reason = urllib3.exceptions.NameResolutionError(
        "api.kaggle.com", None, OSError(-3, "Temporary failure in name resolution"))
    raise requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(pool, url, reason))
'''


def fake_kaggle_package(root):
    """A `kaggle` package whose API fails as the real one does without a network (Kaggle cannot be reached here)."""
    api = root / "kaggle" / "api"
    api.mkdir(parents=True)
    (root / "kaggle" / "__init__.py").write_text("")
    (api / "__init__.py").write_text("")
    (api / "kaggle_api_extended.py").write_text(FAKE_KAGGLE)
    return root


def test_network_failure_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    monkeypatch.syspath_prepend(str(fake_kaggle_package(tmp_path / "fake")))
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "k3y-value-not-shown")
    with pytest.raises(SliceWiseError) as error:
        download_dataset(BRATS_DATASET, tmp_path / "downloads")
    message = str(error.value)
    assert "\n" not in message and BRATS_DATASET in message and "network error" in message
    assert "NameResolutionError" in message and "Check the internet connection" in message
    assert "k3y-value-not-shown" not in message
    assert error.value.__cause__ is not None  # the Prefect flow still retries it (flows/stage_task.py)


def test_fetch_cli_network_failure_prints_one_line(tmp_path):
    from pathlib import Path

    repo = Path(__file__).parents[1]
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text().replace("source: synthetic", "source: kaggle"))
    fake = fake_kaggle_package(tmp_path / "fake")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k3y-value",
           "PYTHONPATH": f"{fake}:{repo}", "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "tasks", "fetch", "--params", str(params)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert "from Kaggle failed (network error: NameResolutionError" in errors[0]
    assert "run the step again" in errors[0] and "k3y-value" not in proc.stderr


@pytest.mark.parametrize("members", [("a", "a/b_flair.nii.gz"), ("x" * 300 + ".jpg",)])
def test_an_archive_this_file_system_cannot_hold_is_one_error_naming_it(tmp_path, members):
    """A file where a folder must go, or a member name over 255 bytes, was a NotADirectoryError or OSError traceback."""
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in members:
            zf.writestr(name, "x")
    with pytest.raises(SliceWiseError, match="cannot be extracted here") as error:
        safe_extract(archive, tmp_path / "out")
    assert error.value.path == str(archive)


# ---------------------------------------------------------------- data set versions

FAKE_VERSIONED_KAGGLE = '''
import json
import os
import shutil
import time
from pathlib import Path


def _log(*parts):
    with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
        log.write(" ".join(parts) + "\\n")


class KaggleApi:
    """Kaggle as far as fetch uses it: the latest version is FAKE_KAGGLE_LATEST, and version N of a data set is
    FAKE_KAGGLE_ARCHIVES/<name>-v<N>.zip."""

    def authenticate(self):
        # as the SDK: a variable that is set, even empty, wins over kaggle.json; a login it refuses is exit(1)
        _log("auth", os.environ.get("KAGGLE_USERNAME", "<from kaggle.json>"))
        if os.environ.get("FAKE_KAGGLE_REFUSE"):
            exit(1)

    def dataset_status(self, dataset, format=None):
        assert format == "json(current_version_number)", format
        time.sleep(float(os.environ.get("FAKE_KAGGLE_SLEEP", "0")))
        _log("status", dataset)
        return json.dumps({"current_version_number": int(os.environ["FAKE_KAGGLE_LATEST"])})

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
        owner, name, version = dataset.split("/")
        _log("download", dataset)
        if os.environ.get("FAKE_KAGGLE_DISK_FULL"):
            raise OSError(28, "No space left on device", str(Path(path) / f"{name}.zip"))
        shutil.copyfile(Path(os.environ["FAKE_KAGGLE_ARCHIVES"]) / f"{name}-v{version}.zip", Path(path) / f"{name}.zip")
'''


@pytest.fixture
def versioned_kaggle(tmp_path, monkeypatch):
    """The fake versioned Kaggle on sys.path, credentials set; returns (archives folder, log file)."""
    root = tmp_path / "fake"
    fake_kaggle_package(root)
    (root / "kaggle" / "api" / "kaggle_api_extended.py").write_text(FAKE_VERSIONED_KAGGLE)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    archives, log = tmp_path / "archives", tmp_path / "kaggle.log"
    archives.mkdir()
    log.write_text("")
    monkeypatch.setenv("FAKE_KAGGLE_ARCHIVES", str(archives))
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("FAKE_KAGGLE_LATEST", "3")
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "k3y")
    return archives, log


def test_the_latest_version_or_a_pinned_one_each_lands_in_a_folder_of_its_own(tmp_path, versioned_kaggle,
                                                                               monkeypatch):
    """An unpinned fetch took whatever Kaggle served and recorded no version, and every version went to one
    <name>.zip, which kaggle judges by date alone: a pinned older version would have passed for the newer archive."""
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    archives, log = versioned_kaggle
    name, downloads = BRATS_DATASET.split("/")[1], tmp_path / "downloads"
    for version in (2, 3):
        with zipfile.ZipFile(archives / f"{name}-v{version}.zip", "w") as zf:
            zf.writestr("VERSION.txt", str(version))
    (downloads / name).mkdir(parents=True)  # an earlier SliceWise's unversioned download, extracted
    (downloads / name / ".extracted").write_text("1:2")
    (downloads / f"{name}.zip").write_bytes(b"PK")
    latest, version = download_dataset(BRATS_DATASET, downloads)
    assert version == 3 and (latest / "VERSION.txt").read_text() == "3"
    assert not (downloads / name).exists() and not (downloads / f"{name}.zip").exists()  # its version unknown
    pinned, version = download_dataset(BRATS_DATASET, downloads, version=2)
    assert version == 2 and (pinned / "VERSION.txt").read_text() == "2"
    # one version extracted at a time (BraTS unpacks to tens of GB); the other keeps its archive
    assert not latest.exists() and (downloads / f"{name}-v3" / f"{name}.zip").is_file()
    assert [line for line in log.read_text().splitlines() if not line.startswith("auth")] == [
        f"status {BRATS_DATASET}", f"download {BRATS_DATASET}/3", f"download {BRATS_DATASET}/2"]  # a pin asks no status
    monkeypatch.setenv("FAKE_KAGGLE_LATEST", "0")  # what the SDK reads from an answer without the field
    with pytest.raises(SliceWiseError, match=f"Kaggle reported no version of {BRATS_DATASET}"):
        download_dataset(BRATS_DATASET, downloads)


def test_fetch_records_the_versions_and_the_check_names_a_newer_one(tmp_path, versioned_kaggle, monkeypatch):
    """A data set's new version on Kaggle changed nothing DVC hashes, so `dvc repro` never saw it and the next fetch,
    whenever a change made one run, took it silently. Fetch now records the versions in data/raw, and `tasks check`
    (run by make run) names a newer one and how to pin either."""
    import json

    import numpy as np
    from PIL import Image

    from tasks import paths
    from tasks.config import KaggleVersions, load_settings
    from tasks.data.kaggle_download import BRATS_DATASET, KAGGLE_IMAGES_DATASET, newer_versions
    from tasks.fetch import fetch_raw
    from tests.conftest import REPO
    from tests.nifti_factory import write_patient

    archives, log = versioned_kaggle
    source = tmp_path / "source"
    write_patient(source / "MICCAI_BraTS2020_TrainingData", "BraTS20_Training_001", np.random.default_rng(1))
    for label in ("yes", "no"):
        (source / "photos" / label).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)).save(
            source / "photos" / label / "Y1.jpg")
    for dataset, folder in ((BRATS_DATASET, "MICCAI_BraTS2020_TrainingData"), (KAGGLE_IMAGES_DATASET, "photos")):
        with zipfile.ZipFile(archives / f"{dataset.split('/')[1]}-v3.zip", "w") as zf:
            for file in (source / folder).rglob("*"):
                if file.is_file():
                    zf.write(file, file.relative_to(source).as_posix())
    settings = load_settings(REPO / "params.yaml")
    data = settings.data.model_copy(update={"source": "kaggle"})
    result = fetch_raw(data, settings.active, 0, tmp_path / "raw", tmp_path / "downloads")
    recorded = json.loads((tmp_path / "raw" / paths.KAGGLE_VERSIONS.name).read_text())
    assert recorded == result["kaggle_versions"] == {"brats": {"dataset": BRATS_DATASET, "version": 3},
                                                      "images": {"dataset": KAGGLE_IMAGES_DATASET, "version": 3}}
    assert result["brats_patients"] == 1 and (tmp_path / "raw" / "brats" / "BraTS20_Training_001").is_dir()

    recorded_file = tmp_path / "raw" / paths.KAGGLE_VERSIONS.name
    assert newer_versions(KaggleVersions(), recorded_file) == []  # still the latest
    monkeypatch.setenv("FAKE_KAGGLE_LATEST", "4")
    said = newer_versions(KaggleVersions(), recorded_file)
    assert len(said) == 2 and said[0].startswith(f"Kaggle has version 4 of {BRATS_DATASET}; data/raw holds version 3")
    assert "tasks set data.kaggle_versions.brats=4" in said[0] and "data.kaggle_versions.images=4" in said[1]
    asked = log.read_text().count("status")
    assert newer_versions(KaggleVersions(brats=3, images=3), recorded_file) == []  # pinned: Kaggle not asked
    assert log.read_text().count("status") == asked


def test_the_version_check_never_holds_up_a_run(tmp_path, versioned_kaggle, monkeypatch):
    """No credentials, or a Kaggle that does not answer: one line saying the versions were not checked."""
    import json

    from tasks.config import KaggleVersions
    from tasks.data.kaggle_download import BRATS_DATASET, newer_versions

    recorded = tmp_path / "kaggle_versions.json"
    recorded.write_text(json.dumps({"brats": {"dataset": BRATS_DATASET, "version": 1}}))
    monkeypatch.setenv("FAKE_KAGGLE_SLEEP", "5")
    assert newer_versions(KaggleVersions(), recorded, timeout=0.5) == [
        "Kaggle's data set versions were not checked (no answer within 0.5 s)"]
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert newer_versions(KaggleVersions(), recorded) == [
        "Kaggle's data set versions were not checked: no Kaggle credentials (a fetch that has to run again will fail)"]
    assert newer_versions(KaggleVersions(), tmp_path / "none.json") == []  # nothing fetched from Kaggle yet


def test_tasks_check_prints_the_newer_version(tmp_path, versioned_kaggle):
    """What `make run` shows before `dvc repro`: the line, as a warning, and the check still passes."""
    import json
    import os
    from pathlib import Path

    from tasks.data.kaggle_download import KAGGLE_IMAGES_DATASET

    repo = Path(__file__).parents[1]
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text().replace("source: synthetic", "source: kaggle"))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "kaggle_versions.json").write_text(json.dumps(
        {"images": {"dataset": KAGGLE_IMAGES_DATASET, "version": 1}}))
    env = {key: os.environ[key] for key in ("FAKE_KAGGLE_LOG", "FAKE_KAGGLE_LATEST", "KAGGLE_USERNAME", "KAGGLE_KEY")}
    env |= {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path / 'fake'}:{repo}",
            "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "tasks", "check", "--params", str(params)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: Kaggle has version 3 of {KAGGLE_IMAGES_DATASET}; data/raw holds version 1" in proc.stderr
    assert "valid (profile quick, data source kaggle)" in proc.stdout


def test_flows_run_says_it_too(tmp_path, versioned_kaggle, monkeypatch, capsys):
    """The two front doors check alike: `flows run` said nothing of a newer version `tasks check` warned of."""
    import json
    import shutil
    from pathlib import Path

    import flows.__main__ as cli
    from tasks.data.kaggle_download import BRATS_DATASET

    repo = Path(__file__).parents[1]
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(repo / name, tmp_path / name)
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("source: synthetic", "source: kaggle"))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "kaggle_versions.json").write_text(json.dumps(
        {"brats": {"dataset": BRATS_DATASET, "version": 2}}))
    monkeypatch.chdir(tmp_path)
    cli._check_parameters({})
    assert f"warning: Kaggle has version 3 of {BRATS_DATASET}; data/raw holds version 2" in capsys.readouterr().err


def test_tasks_check_refuses_a_kaggle_source_without_credentials_before_dvc_removes_data_raw(tmp_path, monkeypatch):
    """`tasks set data.source=kaggle` without credentials: the check said "valid", then DVC removed data/raw and fetch
    failed. Over a Kaggle fetch already there (fetch may not run at all) it is a warning, not a refusal."""
    import json
    import shutil
    from pathlib import Path

    from tasks.config import load_settings
    from tasks.preflight import check_prerequisites, run_warnings

    repo = Path(__file__).parents[1]
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("source: synthetic", "source: kaggle"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(params)
    with pytest.raises(CredentialsError, match="Kaggle credentials not found"):
        check_prerequisites(settings)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "kaggle_versions.json").write_text(json.dumps(
        {"brats": {"dataset": "a/b", "version": 1}}))
    check_prerequisites(settings)  # a Kaggle fetch is there: no refusal
    assert run_warnings(settings) == [
        "Kaggle's data set versions were not checked: no Kaggle credentials (a fetch that has to run again will fail)"]


def _version_archives(archives, name, versions=(2, 3)):
    for version in versions:
        with zipfile.ZipFile(archives / f"{name}-v{version}.zip", "w") as zf:
            zf.writestr(f"{name}/VERSION.txt", str(version))


def test_a_pinned_version_already_extracted_needs_neither_kaggle_nor_credentials(tmp_path, versioned_kaggle,
                                                                                  monkeypatch):
    """A rerun of fetch (a new seed or profile) with the pinned version already here asked Kaggle first: offline, or
    without credentials, it failed on a download it did not need."""
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    archives, log = versioned_kaggle
    name, downloads = BRATS_DATASET.split("/")[1], tmp_path / "downloads"
    _version_archives(archives, name)
    first, _ = download_dataset(BRATS_DATASET, downloads, version=2)
    asked = log.read_text()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    again, version = download_dataset(BRATS_DATASET, downloads, version=2)
    assert (again, version) == (first, 2) and log.read_text() == asked
    # an extraction that does not match its archive (replaced since) is not taken as done: Kaggle is asked
    (downloads / f"{name}-v2" / f"{name}.zip").write_bytes((archives / f"{name}-v3.zip").read_bytes())
    with pytest.raises(CredentialsError):
        download_dataset(BRATS_DATASET, downloads, version=2)


def test_another_version_is_extracted_only_after_the_old_extraction_is_gone(tmp_path, versioned_kaggle, monkeypatch):
    """The new version was extracted beside the old one, so a data set of tens of GB needed room for both, and the
    free-space check refused for lack of room that the step itself was about to free."""
    from tasks.data import kaggle_download
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    archives, _ = versioned_kaggle
    name, downloads = BRATS_DATASET.split("/")[1], tmp_path / "downloads"
    _version_archives(archives, name)
    old, _ = download_dataset(BRATS_DATASET, downloads, version=3)
    present_while_extracting = []
    real = kaggle_download.safe_extract
    monkeypatch.setattr(kaggle_download, "safe_extract",
                        lambda archive, target: present_while_extracting.append(old.exists()) or real(archive, target))
    new, _ = download_dataset(BRATS_DATASET, downloads, version=2)
    assert present_while_extracting == [False] and (new / name / "VERSION.txt").read_text() == "2"
    assert (downloads / f"{name}-v3" / f"{name}.zip").is_file()  # its archive stays


def test_empty_kaggle_variables_leave_kaggle_json_in_charge(tmp_path, versioned_kaggle, monkeypatch):
    """docker compose sets KAGGLE_USERNAME= and KAGGLE_KEY= when docker/.env leaves them blank; the SDK then took ""
    over kaggle.json's values, while fetch said it used kaggle.json."""
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    archives, log = versioned_kaggle
    name = BRATS_DATASET.split("/")[1]
    _version_archives(archives, name)
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text('{"username": "me", "key": "k"}')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "")
    monkeypatch.setenv("KAGGLE_KEY", "")
    download_dataset(BRATS_DATASET, tmp_path / "downloads", version=2)
    assert log.read_text().splitlines()[0] == "auth <from kaggle.json>"


def test_a_refused_login_is_a_credentials_error_naming_their_source(tmp_path, versioned_kaggle, monkeypatch):
    """The SDK exits when its login fails (an expired token): that read as 'network error: SystemExit: 1. Check the
    internet connection'."""
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    monkeypatch.setenv("FAKE_KAGGLE_REFUSE", "1")
    with pytest.raises(CredentialsError) as error:
        download_dataset(BRATS_DATASET, tmp_path / "downloads", version=2)
    message = str(error.value)
    assert "did not accept the credentials from environment (KAGGLE_USERNAME/KAGGLE_KEY)" in message
    assert "network" not in message and "k3y" not in message


def test_a_full_disk_during_the_download_is_said_so_not_a_network_error(tmp_path, versioned_kaggle, monkeypatch):
    from tasks.data.kaggle_download import BRATS_DATASET, download_dataset

    monkeypatch.setenv("FAKE_KAGGLE_DISK_FULL", "1")
    with pytest.raises(SliceWiseError) as error:
        download_dataset(BRATS_DATASET, tmp_path / "downloads", version=2)
    message = str(error.value)
    assert "the disk refused the write (ENOSPC: No space left on device)" in message and "network" not in message
    assert error.value.path.endswith("-v2/brats20-dataset-training-validation.zip")
