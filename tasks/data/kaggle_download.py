"""Download the real data sets from Kaggle (resumable) and extract them safely.

The `kaggle` package authenticates when imported, so it is imported only here, after our own credentials
check has passed. The key is never logged: only *where* credentials were found is reported.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import threading
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tasks.errors import CredentialsError, SliceWiseError
from tasks.io import read_json

log = logging.getLogger(__name__)

BRATS_DATASET = "awsaf49/brats20-dataset-training-validation"
KAGGLE_IMAGES_DATASET = "navoneel/brain-mri-images-for-brain-tumor-detection"
# What an archive may unpack to (a zip bomb is refused before anything is written). The BraTS 2020 archive holds
# about 2,500 files and unpacks to tens of GB; raise these here for a larger data set.
MAX_ARCHIVE_MEMBERS = 100_000
MAX_EXTRACTED_BYTES = 128 * 1024**3
FREE_DISK_MARGIN = 1024**3  # left free on the target's disk after extracting
# A write the disk refused (full, over quota, read-only): not the network, and retrying will not help
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

CREDENTIALS_HELP = (
    "Kaggle credentials not found: save an API token (Kaggle → Settings → API) to ~/.kaggle/access_token, or "
    "kaggle.json to ~/.kaggle/kaggle.json with mode 600, or set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, "
    "or sign in with `kaggle auth login`"
)
# What the pinned kaggle package reads besides kaggle.json (kagglesdk's kaggle_env and kaggle_creds): an API token
# file, and the OAuth credentials `kaggle auth login` saves. Always under ~/.kaggle, whatever KAGGLE_CONFIG_DIR says.
TOKEN_FILES = ("access_token", "access_token.txt", "credentials.json")


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
    for name in TOKEN_FILES:
        if (found := (home or Path.home()) / ".kaggle" / name).is_file():
            return str(found)
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


def safe_extract(archive: Path, target: Path, max_members: int = MAX_ARCHIVE_MEMBERS,
                 max_bytes: int = MAX_EXTRACTED_BYTES) -> int:
    """Extract a zip so that no member can land outside `target` and the whole fits its limits and the disk;
    refuses the whole archive otherwise, before writing anything.

    The sizes are the ones the archive declares: zipfile never writes more than a member's declared size (a
    member that inflates beyond it fails its CRC check), so the declared total bounds what lands on disk.
    """
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
            check_extracted_size(archive, target, members, max_members, max_bytes)
            zf.extractall(target)
            return len(members)
    # zlib.error: damaged deflate data; RuntimeError: an encrypted member; NotImplementedError: a compression method
    # (Deflate64) zipfile cannot read. The archive is kept as complete, so a rerun would only repeat the traceback.
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
        raise SliceWiseError(f"not a usable zip archive ({type(exc).__name__}: {exc}); delete it to download again",
                             archive) from exc
    except OSError as exc:  # a member this file system cannot hold: a name too long, a file where a folder must go
        raise SliceWiseError(f"cannot be extracted here ({type(exc).__name__}: {exc})", archive) from exc


def check_extracted_size(archive: Path, target: Path, members: list[zipfile.ZipInfo], max_members: int,
                         max_bytes: int) -> None:
    """Refuse an archive with too many members, too many bytes once extracted, or more than the disk has free."""
    total = sum(member.file_size for member in members)
    if len(members) > max_members:
        raise SliceWiseError(f"refusing to extract {len(members):,} members (at most {max_members:,}: "
                             "MAX_ARCHIVE_MEMBERS in tasks/data/kaggle_download.py)", archive)
    if total > max_bytes:
        raise SliceWiseError(f"refusing to extract {_size(total)} (at most {_size(max_bytes)}: MAX_EXTRACTED_BYTES in "
                             "tasks/data/kaggle_download.py); a zip bomb?", archive)
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if total > free - FREE_DISK_MARGIN:
        raise SliceWiseError(f"extracting needs {_size(total)} but {existing} has {_size(free)} free; free some space "
                             "and run the step again", archive)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1024**3:.1f} GB" if nbytes >= 1024**3 else f"{nbytes / 1024**2:.1f} MB"


def download_dataset(dataset: str, downloads: Path, version: int | None = None) -> tuple[Path, int]:
    """Download (or resume) version `version` of one Kaggle data set (None: its latest) into
    `downloads/<name>-v<version>/`; returns the extracted folder and the version it holds.

    Each version has a folder of its own: kaggle judges an archive already there by its date alone, so a newer
    archive of another version under the same name would pass for the one asked for. Only one version stays
    extracted (the BraTS archive unpacks to tens of GB); the others keep their archives, so going back to one costs
    an extraction, not a download."""
    name = dataset.split("/")[1]
    if version is not None and (extracted := _current_extraction(downloads / f"{name}-v{version}" / f"{name}.zip")):
        # A pinned version already here, whole: nothing to ask Kaggle (offline, or without credentials, a change of
        # seed or profile that reruns fetch must not fail on a download it does not need)
        log.info("%s version %d is already downloaded and extracted in %s", dataset, version, extracted)
        _drop_other_extractions(downloads, name, keep=extracted.parent)
        return extracted, version
    source = credentials_source()
    try:
        api = _kaggle_api(source)
        if version is None:
            version = current_version(api, dataset)
        log.info("downloading %s version %d (credentials from %s)", dataset, version, source)
        folder = downloads / f"{name}-v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        # force=False: kaggle skips a complete archive and resumes a partial one (it keeps a .kaggle-partial marker).
        api.dataset_download_files(f"{dataset}/{version}", path=str(folder), force=False, quiet=False, unzip=False)
    except SliceWiseError:
        raise
    except (Exception, SystemExit) as exc:  # requests, urllib3, the Kaggle SDK (which may call exit())
        raise download_failure(dataset if version is None else f"{dataset} version {version}", source, exc) from exc
    # the other versions' files go first: a data set of tens of GB should not need room for two extractions (their
    # archives stay, and data/raw's hard links keep what fetch linked from them)
    _drop_other_extractions(downloads, name, keep=folder)
    return extracted_archive(folder / f"{name}.zip"), version


def _drop_other_extractions(downloads: Path, name: str, keep: Path) -> None:
    """Remove the extracted files of the data set's other versions (their archives stay), and the unversioned
    download an earlier SliceWise kept as downloads/<name>.zip and downloads/<name>/ (which version it held is not
    known). Files fetch linked into data/raw stay whole: a hard link keeps the data."""
    for other in sorted(downloads.glob(f"{name}-v*")):
        if other != keep and (other / name).is_dir():
            log.info("removing %s (version %s's extracted files; its archive stays)", other / name,
                     other.name.rsplit("-v", 1)[-1])
            shutil.rmtree(other / name)
    legacy = downloads / name
    if (legacy / ".extracted").exists():
        log.info("removing %s and %s.zip: an earlier download whose version is not known", legacy, legacy)
        shutil.rmtree(legacy)
        (downloads / f"{name}.zip").unlink(missing_ok=True)


# The variables the kaggle package reads; one set but empty still overrides kaggle.json's value with ""
# (docker compose passes KAGGLE_USERNAME= when docker/.env leaves it blank)
KAGGLE_VARIABLES = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")


def _kaggle_api(source: str):
    """The authenticated API. The SDK calls exit() when its login fails (an expired or revoked token): that is a
    credentials error naming where they came from (`source`), not a network one."""
    for variable in KAGGLE_VARIABLES:
        if os.environ.get(variable) == "":
            del os.environ[variable]
    from kaggle.api.kaggle_api_extended import KaggleApi  # lazy: authenticates at import

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit as exc:
        raise CredentialsError(f"Kaggle did not accept the credentials from {source} (an expired or revoked API "
                               "token?): create a new one (Kaggle → Settings → API) and run the step again") from exc
    return api


def current_version(api, dataset: str) -> int:
    """The number of the data set's latest version, as Kaggle reports it now."""
    answer = json.loads(api.dataset_status(dataset, format="json(current_version_number)"))
    version = answer.get("current_version_number")
    # the SDK reads a field the answer lacks as 0: never a version (they count from 1)
    if not isinstance(version, int) or version < 1:
        raise SliceWiseError(f"Kaggle reported no version of {dataset} ({answer}); pin one in "
                             "data.kaggle_versions, as its page lists them")
    return version


def newer_versions(pinned, recorded_file: Path, timeout: float = 10.0) -> list[str]:
    """One line per data set fetched at its latest (`pinned`, data.kaggle_versions, says None) for which Kaggle now
    has a newer version than `recorded_file` (data/raw/kaggle_versions.json) says data/raw holds. Kaggle is asked
    once, for at most `timeout` seconds; credentials missing, no network or no answer in time: one line saying the
    versions were not checked (the run goes on: it does not need Kaggle unless fetch runs)."""
    recorded = read_json(recorded_file, default={})
    unpinned = {key: entry for key, entry in recorded.items()
                if getattr(pinned, key, None) is None and isinstance(entry, dict) and "version" in entry}
    if not unpinned:
        return []
    try:
        source = credentials_source()
    except CredentialsError:
        return ["Kaggle's data set versions were not checked: no Kaggle credentials (a fetch that has to run "
                "again will fail)"]
    found: dict[str, int] = {}
    failure: list[BaseException] = []

    def ask() -> None:  # in a thread of its own: the SDK sets no timeout, and an unanswered call must not stop the run
        try:
            api = _kaggle_api(source)
            for key, entry in unpinned.items():
                found[key] = current_version(api, entry["dataset"])
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the SDK's and requests' own types, and exit()
            failure.append(exc)

    asking = threading.Thread(target=ask, name="kaggle-versions", daemon=True)
    asking.start()
    asking.join(timeout)
    if asking.is_alive() or failure:
        why = f"no answer within {timeout:g} s" if asking.is_alive() else root_cause_line(failure[0])
        return [f"Kaggle's data set versions were not checked ({why})"]
    return [f"Kaggle has version {found[key]} of {entry['dataset']}; data/raw holds version {entry['version']}, "
            f"and dvc repro will not fetch the new one by itself: pin it (python -m tasks set "
            f"data.kaggle_versions.{key}={found[key]}) to rebuild from it, or pin {entry['version']} to keep this one"
            for key, entry in unpinned.items() if found[key] > int(entry["version"])]


def root_cause_line(exc: BaseException) -> str:
    """`exc`'s innermost cause in one line: its type and the first line of its message."""
    cause = root_cause(exc)
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


def extracted_archive(archive: Path) -> Path:
    """The folder `archive` is extracted in, next to it; extracted again, into a fresh folder, when the archive is
    not the one extracted last (a download resumed or replaced in place)."""
    if current := _current_extraction(archive):
        return current
    extracted = archive.with_suffix("")
    # The old version's files go first: they must not mix with the new one's, and a data set of tens of GB
    # should not need room for two extractions (the archive stays, so nothing is lost if this one fails).
    shutil.rmtree(extracted, ignore_errors=True)
    staging = extracted.with_name(extracted.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_extract(archive, staging)
    except BaseException:  # a damaged archive or Ctrl-C: its part-extraction (many GB for BraTS) is no use to anyone
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(extracted)
    (extracted / ".extracted").write_text(_identity(archive))
    return extracted


def _identity(archive: Path) -> str:
    info = archive.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def _current_extraction(archive: Path) -> Path | None:
    """The folder `archive` was extracted into when that extraction is of this very archive (its size and time
    recorded in the folder's .extracted marker, written once the extraction was whole), else None."""
    extracted = archive.with_suffix("")
    done_marker = extracted / ".extracted"
    if not (archive.is_file() and done_marker.is_file()):
        return None
    recorded, identity = done_marker.read_text(), _identity(archive)
    if recorded == identity:
        return extracted
    # an empty marker is an older version's: it stands when the archive is older than the extraction
    if not recorded and archive.stat().st_mtime_ns <= done_marker.stat().st_mtime_ns:
        done_marker.write_text(identity)
        return extracted
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception behind `exc` (requests wraps urllib3, which wraps the socket error)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def download_failure(dataset: str, source: str, exc: BaseException) -> SliceWiseError:
    """One line for a failed download: what failed, why, and what to do."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return CredentialsError(f"Kaggle refused the credentials from {source} (HTTP {status}) while downloading "
                                f"{dataset}: check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json, and that you accepted "
                                "the data set's rules on its Kaggle page")
    if status == 404:
        return SliceWiseError(f"Kaggle has no data set {dataset} (HTTP 404)")
    cause = root_cause(exc)
    if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
        return SliceWiseError(f"downloading {dataset} from Kaggle stopped: the disk refused the write "
                              f"({errno.errorcode.get(cause.errno, cause.errno)}: {cause.strerror}); free space (or "
                              "make it writable) and run the step again: the partial download resumes",
                              cause.filename or None)
    detail = root_cause_line(exc)
    where = f"HTTP {status}" if status else "network error"
    return SliceWiseError(f"downloading {dataset} from Kaggle failed ({where}: {detail}). Check the internet "
                          "connection (and HTTPS_PROXY behind a proxy), then run the step again: the partial "
                          "download resumes")
