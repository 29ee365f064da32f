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


def test_safe_archive_extracts(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("brain_tumor_dataset/yes/Y1.jpg", "x")
    assert safe_extract(archive, tmp_path / "out") == 1
    assert (tmp_path / "out" / "brain_tumor_dataset" / "yes" / "Y1.jpg").exists()


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
