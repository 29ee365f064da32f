"""Download the real data sets from Kaggle (resumable) and extract them safely.

The `kaggle` package authenticates when imported, so it is imported only here, after our own credentials
check has passed. The key is never logged: only *where* credentials were found is reported.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tasks.errors import CredentialsError, SliceWiseError

log = logging.getLogger(__name__)

BRATS_DATASET = "awsaf49/brats20-dataset-training-validation"
KAGGLE_IMAGES_DATASET = "navoneel/brain-mri-images-for-brain-tumor-detection"

CREDENTIALS_HELP = (
    "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
    "(Kaggle → Settings → API → Create New Token) to ~/.kaggle/kaggle.json with mode 600"
)


def credentials_source(env: dict[str, str] | None = None, home: Path | None = None) -> str:
    """Where usable credentials are (never their value); raises CredentialsError when there are none."""
    env = dict(os.environ) if env is None else env
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "environment (KAGGLE_USERNAME/KAGGLE_KEY)"
    if env.get("KAGGLE_API_TOKEN"):
        return "environment (KAGGLE_API_TOKEN)"
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else (home or Path.home()) / ".kaggle"
    if (config_dir / "kaggle.json").is_file():
        return str(config_dir / "kaggle.json")
    raise CredentialsError(CREDENTIALS_HELP)


def _is_symlink(member: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(member.external_attr >> 16)


def unsafe_reason(member: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could write outside the target (zip-slip), or None when it is safe."""
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "parent-directory reference (..)"
    if _is_symlink(member):
        return "symbolic link"
    return None


def safe_extract(archive: Path, target: Path) -> int:
    """Extract a zip so that no member can land outside `target`; refuses the whole archive otherwise."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                if reason := unsafe_reason(member):
                    raise SliceWiseError(f"refusing to extract member {member.filename!r}: {reason}", archive)
            target = target.resolve()
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(target):  # belt and braces after the checks above
                    raise SliceWiseError(f"member {member.filename!r} escapes the target folder", archive)
            zf.extractall(target)
            return len(members)
    except zipfile.BadZipFile as exc:
        raise SliceWiseError(f"not a valid zip archive ({exc}); delete it to download again", archive) from exc


def download_dataset(dataset: str, downloads: Path) -> Path:
    """Download (or resume) one Kaggle data set archive into `downloads`; returns the extracted folder."""
    source = credentials_source()
    log.info("downloading %s (credentials from %s)", dataset, source)
    from kaggle.api.kaggle_api_extended import KaggleApi  # lazy: authenticates at import

    api = KaggleApi()
    api.authenticate()
    downloads.mkdir(parents=True, exist_ok=True)
    # force=False: kaggle skips a complete archive and resumes a partial one (it keeps a .kaggle-partial marker).
    api.dataset_download_files(dataset, path=str(downloads), force=False, quiet=False, unzip=False)
    archive = downloads / f"{dataset.split('/')[1]}.zip"
    extracted = downloads / archive.stem
    done_marker = extracted / ".extracted"
    if not done_marker.exists():
        safe_extract(archive, extracted)
        done_marker.touch()
    return extracted
