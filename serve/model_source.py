"""Where the served model comes from: the registry's champion (cached locally by version) or a file.

A source answers two questions: which model is current (`current_key`, cheap, asked by the poller) and how to
load it (`load`). The registry source keeps every champion it served under `.serve_cache/<name>/v<version>-<run>/`
(ONNX model, torch checkpoint for Grad-CAM, metrics, the bundled examples unpacked, the registry card) and
remembers the last one, so a restart
serves it at once, before the registry is even asked (`cached`), and a registry outage does not stop serving.
The registry is reached only through its client, tasks/release/registry.py. `challenger()` loads the latest
challenger the same way, for the web UI's side-by-side comparison (GET /model/compare).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

from serve.served_model import ServedModel, load_served_model, read_optional_json
from tasks.config import RegistrySettings, TrackingSettings
from tasks.errors import SliceWiseError
from tasks.io import sha256_file, write_text_atomic
from tasks.redaction import redact
from tasks.release.registry import EXAMPLES_ARCHIVE, METADATA_FILE, ModelRegistry, versioned_title
from tasks.tracking.store import tracking_uri

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # the MLflow model folder as downloaded: the .onnx with any external-data files beside it
METRICS_FILE = "metrics.json"
EXAMPLES_DIR = "examples"  # examples.zip of the registered model, unpacked (serve/examples.py reads it)
CARD_FILE = "card.json"  # written last: a version folder without it is incomplete and ignored
# How long a /model/compare request waits for another one's registry lookup of the challenger: a healthy store answers
# in well under a second, a hung one takes tracking.max_attempts x request_timeout_seconds (about 33 s)
CHALLENGER_WAIT_SECONDS = 5.0
DOWNLOAD_LOCK = ".download.lock"  # in the cache folder: one download at a time, whichever process
# Versions kept in the cache besides the served one, the one served before and the challenger: another worker process
# of the server may still serve an older one for a poll's time
KEPT_VERSIONS = 3


class ModelSource(Protocol):
    description: str

    def cached(self) -> tuple[str, ServedModel] | None: ...

    def current_key(self) -> str | None: ...

    def load(self, key: str) -> ServedModel: ...


class FileSource:
    """An ONNX file given on the command line (`python -m serve --model-file exports/model.onnx`)."""

    def __init__(self, onnx_path: Path, checkpoint: Path | None = None, metrics_path: Path | None = None,
                 examples: Path | None = None):
        self.onnx_path = Path(onnx_path)
        self.checkpoint = checkpoint
        self.metrics_path = metrics_path
        self.examples = examples  # a folder with index.json (tasks/release/examples.py), for tests and demos
        self.description = f"file {self.onnx_path.name}"  # a client reads it (503s): no server path

    def cached(self) -> None:
        return None

    def current_key(self) -> str | None:
        """Changes when the file is replaced (export writes a new file and renames it over the old one)."""
        try:
            stat = self.onnx_path.stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}"

    def load(self, key: str) -> ServedModel:
        checkpoint = self.checkpoint if self.checkpoint and self.checkpoint.is_file() else None
        if checkpoint is None:
            log.info("no torch checkpoint at %s: Grad-CAM is unavailable (pass --checkpoint)", self.checkpoint)
        card = {"source": "file", "path": self.onnx_path.name, "name": self.onnx_path.name, "version": None,
                "alias": None, "tags": {"onnx_sha256": sha256_file(self.onnx_path)}}
        return load_served_model(self.onnx_path, card, checkpoint, read_optional_json(self.metrics_path),
                                 read_optional_json(self.onnx_path.with_suffix(".json")), self.examples)


# An absolute path on this server (not the path of a URL: no letter, colon or slash before it) and its last part;
# and a local database's URI, whose path follows the slashes of its scheme.
_SERVER_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/:;,()'\"]+/)+([^\s/:;,()'\"]+)")
_LOCAL_STORE = re.compile(r"(sqlite:///|file://)/(?:[^\s/:;,()'\"]+/)*([^\s/:;,()'\"]+)")


def public_text(text: str) -> str:
    """A message (or a store's URI) for clients: every absolute path on this server shortened to its last part (a
    store error says sqlite:////srv/project/mlflow.db, a file error /srv/project/exports/model.onnx); a server's URI
    (credentials already redacted) stays as it is."""
    return _SERVER_PATH.sub(r"\1", _LOCAL_STORE.sub(r"\1\2", text))


class RegistrySource:
    """`models:/<name>@<alias>` from the MLflow registry, every version cached under `cache_dir`."""

    def __init__(self, registry: RegistrySettings, tracking: TrackingSettings, cache_dir: Path):
        self.registry = registry
        self.tracking = tracking
        self.uri = redact(tracking_uri())  # the cache's key: no credentials
        self.shown_uri = public_text(self.uri)  # what /healthz, /model/info and errors show: no server path either
        self.cache_dir = Path(cache_dir) / registry.model_name
        self.pointer = self.cache_dir / f"{registry.alias}.json"
        self.description = f"models:/{registry.model_name}@{registry.alias} in {self.shown_uri}"
        self._challengers: dict[str, ServedModel] = {}  # loaded challengers by cache key (a few at most)
        self._challenger_lock = threading.Lock()
        self._last_challenger: tuple[object, ServedModel] | None = None  # what the last lookup found

    # ------------------------------------------------------------ the cache (no MLflow import: fast start-up)

    def cached(self) -> tuple[str, ServedModel] | None:
        """The champion served last time from this same store, if its files are complete."""
        pointer = read_optional_json(self.pointer)
        if pointer.get("tracking_uri") != self.uri or not pointer.get("key"):
            return None
        folder = self.cache_dir / pointer["key"]
        if not (folder / CARD_FILE).is_file():
            return None
        return pointer["key"], self._load_folder(folder)

    def _load_folder(self, folder: Path) -> ServedModel:
        # the store as clients may read it (a card cached before 2026-12-06 holds the server's path to it)
        card = read_optional_json(folder / CARD_FILE) | {"tracking_uri": self.shown_uri}
        files = {kind: folder / name for kind, name in card.get("files", {}).items() if name}
        # The weights must be the ones the version's card, metrics and gate verdict are about: another version's
        # model.onnx copied over this one's artifact was served under this version's name and figures.
        tagged = str((card.get("tags") or {}).get("onnx_sha256", ""))
        checked = re.fullmatch(r"[0-9a-f]{64}", tagged) and "onnx" in files
        if checked and (found := sha256_file(files["onnx"])) != tagged:
            raise SliceWiseError(f"version {card.get('version')}'s ONNX file has sha256 {found[:12]}…, not the "
                                 f"{tagged[:12]}… its registry tag onnx_sha256 names: not this version's model",
                                 files["onnx"])
        examples = folder / EXAMPLES_DIR
        return load_served_model(files["onnx"], card, files.get("checkpoint"),
                                 read_optional_json(folder / METRICS_FILE), read_optional_json(files.get("metadata")),
                                 examples if examples.is_dir() else None)

    def _remember(self, key: str) -> None:
        write_text_atomic(json.dumps({"tracking_uri": self.uri, "key": key}) + "\n", self.pointer)

    # ------------------------------------------------------------ the registry

    def _registry(self) -> ModelRegistry:
        # A local store that does not exist yet is an error: asking would create it empty as a side effect.
        return ModelRegistry.existing(self.tracking, self.registry.model_name)

    def champion_version(self):
        """The model version the alias points at, or None when there is no such model or alias."""
        return self._registry().by_alias(self.registry.alias)

    def current_key(self) -> str | None:
        version = self.champion_version()
        return None if version is None else version_key(version)

    def load(self, key: str) -> ServedModel:
        folder = self.cache_dir / key
        if not (folder / CARD_FILE).is_file():
            self._download(key, folder)
            model = self._load_folder(folder)
        else:
            self._refresh_card(key, folder)
            try:
                model = self._load_folder(folder)
            except SliceWiseError as exc:
                # cached before downloads were checked, or damaged on disk since: fetched once more, not kept for good
                log.warning("%s: %s; downloading it again", key, exc)
                shutil.rmtree(folder, ignore_errors=True)
                self._download(key, folder)
                model = self._load_folder(folder)
        previous = read_optional_json(self.pointer).get("key")
        self._remember(key)
        self.prune(keep={key, previous, *self._challengers})
        return model

    def _refresh_card(self, key: str, folder: Path) -> None:
        """The registry's tags and description of a version cached earlier (as a challenger, or served before): the
        register step rewrites a version's tags when it completes a killed run's, and its card is set after the
        version is made, so /model/info showed the copy taken when the version was first cached. A store that fails
        here leaves the cached card: the files are what is served, and a swap must not wait for their description."""
        try:
            version = self.champion_version()
        except Exception as exc:  # noqa: BLE001 - the store's own errors, as current_key's
            log.warning("%s: the registry's tags could not be read again (%s); serving the cached card", key,
                        redact(f"{type(exc).__name__}: {exc}"))
            return
        if version is None or version_key(version) != key:
            return  # the alias moved meanwhile: the caller's load serves the folder, the next poll the new one
        card = read_optional_json(folder / CARD_FILE)
        fresh = {"tags": dict(version.tags or {}), "description": version.description or ""}
        if {k: card.get(k) for k in fresh} != fresh:
            if fresh["description"] != card.get("description"):  # the card was rewritten: its whole text too
                try:
                    fresh["model_card"] = self._whole_card(version)
                except Exception as exc:  # noqa: BLE001 - as above: the cached text stays
                    log.warning("%s: the whole model card could not be read again (%s)", key,
                                redact(f"{type(exc).__name__}: {exc}"))
            write_text_atomic(json.dumps(card | fresh, indent=2, default=str), folder / CARD_FILE)

    def prune(self, keep: set) -> None:
        """Remove the cached versions beyond the KEPT_VERSIONS newest, except those in `keep` (served, served before,
        the challenger). Every champion and every challenger /model/compare touched stayed, about 31 MB each for
        the quick model, with nothing ever removing one. Under the download lock: never a folder being written. A
        lock held elsewhere (a challenger's download) skips this prune rather than wait for it: a champion's swap once
        waited for another version's download to end; the next load prunes."""
        with self._download_lock(wait=False) as held:
            if not held:
                log.info("model cache not pruned now: a download holds it")
                return
            self._remove_dead_downloads()
            versions = sorted((f for f in self.cache_dir.iterdir() if f.is_dir() and (f / CARD_FILE).is_file()),
                              key=lambda f: (f / CARD_FILE).stat().st_mtime, reverse=True)
            for folder in versions[KEPT_VERSIONS:]:
                if folder.name not in keep:
                    log.info("removing %s from the model cache (not served, not among the %d newest)", folder.name,
                             KEPT_VERSIONS)
                    shutil.rmtree(folder, ignore_errors=True)

    def _download(self, key: str, folder: Path) -> None:
        version = self.champion_version()
        if version is None or version_key(version) != key:
            raise SliceWiseError(f"the champion changed while loading {key}; the next poll picks up the new one",
                                 self.shown_uri)
        self._download_version(version, folder)

    def _download_version(self, version, folder: Path) -> None:
        """Fetch a version's files into a temporary folder, then rename it into place (never half a cache).

        One download at a time per cache folder, across threads and processes (a file lock): the champion's reload
        and /model/compare can want the same version at once (the challenger just promoted), and so can the
        workers of one server at start-up. The later one finds it done instead of replacing a folder in use."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._download_lock(wait=True):
            self._remove_dead_downloads()
            if not (folder / CARD_FILE).is_file():
                self._download_into(version, folder)

    def _remove_dead_downloads(self) -> None:
        """Staging folders of downloads killed outright (a server restarted while starting up, out of memory): a whole
        model each, which nothing removed. Called with the download lock held, so no download is alive."""
        for dead in self.cache_dir.glob(".download-*"):
            log.info("removing %s from the model cache (a download that never finished)", dead.name)
            shutil.rmtree(dead, ignore_errors=True)

    @contextmanager
    def _download_lock(self, wait: bool) -> Iterator[bool]:
        """The cache folder's lock for writing or removing version folders, across threads and processes: yields
        whether it is held (always, when `wait`; otherwise only if nobody else held it)."""
        with open(self.cache_dir / DOWNLOAD_LOCK, "a") as lock:  # each call its own open file: flock works between
            try:  # threads too; released when the file closes
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def _download_into(self, version, folder: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            log.info("downloading %s version %s into %s", self.registry.model_name, version.version, folder)
            self._registry().download(str(version.version), staging / MODEL_DIR)
            # The register step ships the torch checkpoint and model.json as the logged model's extra files.
            files = {kind: first_file(staging, MODEL_DIR, pattern)
                     for kind, pattern in (("onnx", "*.onnx"), ("checkpoint", "*.pt"), ("metadata", METADATA_FILE))}
            if files["onnx"] is None:
                raise SliceWiseError(f"registry version {version.version} holds no .onnx file", self.shown_uri)
            examples = first_file(staging, MODEL_DIR, EXAMPLES_ARCHIVE)
            if examples is not None:
                with zipfile.ZipFile(staging / examples) as archive:  # our own artifact; names are flat
                    archive.extractall(staging / EXAMPLES_DIR)
            run_files = self._fetch_run_artifacts(version.run_id, staging)
            card = self._card(version, run_files) | {"files": files}
            (staging / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
            # loaded once before it is kept (its weights checked against the registry's tag): the card marks a
            # folder complete, and a truncated model kept so was never fetched again
            self._load_folder(staging)
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder from an interrupted download
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fetch_run_artifacts(self, run_id: str | None, staging: Path) -> dict[str, str]:
        """The registering run's metrics.json (the test-split metrics /model/info shows), when it logged one."""
        if not run_id:
            return {}
        downloaded = self._registry().download_run_file(run_id, METRICS_FILE, staging / "run")
        if downloaded is None:
            return {}
        found, local = downloaded
        shutil.move(local, staging / METRICS_FILE)
        shutil.rmtree(staging / "run", ignore_errors=True)
        return {"metrics": found}

    def _whole_card(self, version) -> str | None:
        """The registering run's model_card.md, the card whole (the description may be cut to MLflow's limit), titled
        with its version as the description is (it was logged before the version existed); None when the run logged
        none."""
        card = self._registry().run_card(version.run_id, scratch=self.cache_dir)
        return None if card is None else versioned_title(card, self.registry.model_name, version.version)

    def _card(self, version, run_files: dict[str, str]) -> dict:
        return {"source": "registry", "tracking_uri": self.shown_uri, "name": self.registry.model_name,
                "version": str(version.version), "alias": self.registry.alias, "run_id": version.run_id,
                "registered_at_ms": version.creation_timestamp, "description": version.description or "",
                "model_card": self._whole_card(version),
                "tags": dict(version.tags or {}), "artifacts": run_files}


    # ------------------------------------------------------------ the challenger (GET /model/compare)

    def challenger_version(self, served: str | None = None):
        """The version `registry.challenger_alias` points at (the latest the gate rejected), else the newest
        version other than the champion (e.g. the previous champion); None when the champion is all there is.
        `served`: the version this server answers with, which is the champion column whatever the alias says now
        (a champion that failed to load, an alias moved since the last poll): never its own challenger."""
        registry = self._registry()
        if served is None:
            champion = registry.by_alias(self.registry.alias)
            served = None if champion is None else str(champion.version)
        version = registry.by_alias(self.registry.challenger_alias)
        if version is not None and str(version.version) != served:
            return version
        others = [v for v in registry.client.search_model_versions(f"name = '{self.registry.model_name}'")
                  if str(v.version) != served]
        if not others:
            return None
        # read again by number: a search answers without the versions' aliases (MLflow 3), which the page shows
        return registry.resolve(str(max(int(v.version) for v in others)))

    def challenger(self, served: str | None = None) -> tuple[object, ServedModel] | None:
        """(registry version, loaded model) of the challenger, downloaded into the cache once.

        One request at a time asks the registry; another one meanwhile waits up to CHALLENGER_WAIT_SECONDS (a healthy
        store answers well within it), then gets the challenger the last lookup found, or a SliceWiseError saying a
        lookup is under way. /model/compare needs no login: with a store that hangs (each call up to
        tracking.max_attempts x request_timeout_seconds) every request waiting on it would hold a server thread.
        `served`: the served model's version (challenger_version)."""
        if not self._challenger_lock.acquire(timeout=CHALLENGER_WAIT_SECONDS):
            if self._last_challenger is not None:
                return self._last_challenger
            raise SliceWiseError("another request is asking the registry for the challenger; try again shortly",
                                 self.shown_uri)
        try:
            version = self.challenger_version(served)
            if version is None:
                self._last_challenger = None
                return None
            key = version_key(version)
            if key not in self._challengers:
                folder = self.cache_dir / key
                if not (folder / CARD_FILE).is_file():
                    self._download_version(version, folder)
                self._challengers = {key: self._load_folder(folder)}  # keep only the latest one in memory
            self._last_challenger = (version, self._challengers[key])
            return self._last_challenger
        finally:
            self._challenger_lock.release()


def version_key(version) -> str:
    """Cache folder name of a registry version: its number and run, so two stores' "v1" never collide."""
    return f"v{version.version}-{(version.run_id or 'norun')[:8]}"


def first_file(root: Path, folder: str, pattern: str) -> str | None:
    """Path, relative to `root`, of the first file matching `pattern` anywhere under root/folder."""
    matches = sorted((root / folder).rglob(pattern))
    return str(matches[0].relative_to(root)) if matches else None

