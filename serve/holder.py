"""The model being served right now, swapped without a restart when the champion changes.

Requests read `holder.model` once and use that object to the end, so a swap mid-request is harmless: the old
model finishes the requests it started. A poller thread (every `serve.poll_seconds`) and `POST /model/reload`
both call `refresh()`, which asks the source for the current key and loads only when it changed. A key that failed
to load is tried again by the poller only every FAILED_RETRY_SECONDS (a broken champion was downloaded whole at every
poll: about 42 MB a minute for as long as its alias stayed), and at once by `POST /model/reload`.
"""

from __future__ import annotations

import logging
import threading
import time

from serve.model_source import FileSource, ModelSource, public_text
from serve.served_model import ServedModel
from tasks.errors import SliceWiseError
from tasks.redaction import redact

log = logging.getLogger(__name__)

FAILED_RETRY_SECONDS = 300.0  # a broken champion's download again: ten polls at the default 30 s
FILE_HINT = "serve an exported file: `python -m serve --model-file exports/model.onnx`"
NO_MODEL_HINT = f"train and register one (`make run`), or {FILE_HINT}"


class ModelHolder:
    def __init__(self, source: ModelSource):
        self.source = source
        # The model and the words about it change together, in one assignment: a reader of both (/model/info)
        # must never pair the new model with the old detail or the reverse
        self._view: tuple[ServedModel | None, str] = (None, "starting")
        self.key: str | None = None
        self.last_check: float | None = None
        self._refresh_lock = threading.Lock()
        self._failed: tuple[str, float] | None = None  # (key that failed to load, when the poller may try it again)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model(self) -> ServedModel | None:
        return self._view[0]

    @property
    def detail(self) -> str:
        return self._view[1]

    @detail.setter
    def detail(self, text: str) -> None:
        self._view = (self._view[0], text)

    def view(self) -> tuple[ServedModel | None, str]:
        """The served model and its detail, as one pair."""
        return self._view

    def start(self, poll_seconds: float) -> None:
        """Serve the cached champion at once when there is one, and check the source in the background;
        with nothing cached, check now, so the start-up log says what is (not) served."""
        cached = None
        try:
            cached = self.source.cached()
        except Exception as exc:  # a damaged cache is only a slower start: the registry has the files
            log.warning("ignoring the local model cache: %s", redact(exc))
        if cached is not None:
            self._swap(*cached, how="from the local cache")
            self.detail += "; checking the registry for a newer champion"
            first_check_delay = 0.0
        else:
            self.refresh()
            first_check_delay = poll_seconds
        if poll_seconds > 0 or cached is not None:
            self._thread = threading.Thread(target=self._poll, args=(poll_seconds, first_check_delay),
                                            name="champion-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self, every: float, first_delay: float) -> None:
        if self._stop.wait(first_delay):
            return
        while True:
            self.refresh(retry_failed=False)
            if every <= 0 or self._stop.wait(every):
                return

    def refresh(self, retry_failed: bool = True) -> dict:
        """Ask the source which model is current; load it when it differs from the served one. `retry_failed`
        False (the poller): a key that failed to load is not loaded again before its retry time."""
        with self._refresh_lock:
            self.last_check = time.time()
            try:
                key = self.source.current_key()
            except Exception as exc:  # any failure of the store: keep serving what is loaded, say why
                return self._unreachable(exc)
            if key is None:
                return self._no_model()
            if key == self.key and self.model is not None:
                self.detail = self._serving_detail()
                return {"changed": False, "key": key}
            if not retry_failed and self._failed and self._failed[0] == key and time.monotonic() < self._failed[1]:
                return {"changed": False, "key": self.key, "failed": key}  # /healthz still says why it failed
            try:
                model = self.source.load(key)
            except Exception as exc:  # a broken download or model file must not stop serving the current one
                self._failed = (key, time.monotonic() + FAILED_RETRY_SECONDS)
                return self._unreachable(exc)
            self._failed = None
            previous = self.key
            self._swap(key, model, how="" if previous is None else f"(replacing {previous})")
            return {"changed": True, "key": key, "previous": previous}

    def _swap(self, key: str, model: ServedModel, how: str) -> None:
        self.key = key
        self._view = (model, self._serving_detail(model))
        log.info("%s %s", self.detail, how)

    def _serving_detail(self, model: ServedModel | None = None) -> str:
        model = model if model is not None else self.model
        card = model.card if model else {}
        if card.get("source") == "registry":
            what = f"models:/{card['name']}/{card['version']} ({card['alias']})"
        else:
            what = f"file {card.get('path')}"
        return f"serving {what}"

    def _no_model(self) -> dict:
        if self.model is not None and isinstance(self.source, FileSource):
            # `dvc repro` (and the flow) remove exports/model.onnx before export writes the new one: the model
            # loaded from it stays served until a file is there again (a registry alias removed stops it, below)
            self.detail = (f"{self._serving_detail()}; {self.source.description} is gone (being exported again?): "
                           "still serving the model loaded from it")
            log.warning(self.detail)
            return {"changed": False, "key": self.key}
        if self.model is not None:
            log.warning("%s no longer names a model; stopped serving %s", self.source.description, self.key)
        hint = "export it again (`make run`), or point --model-file at an existing ONNX file" \
            if isinstance(self.source, FileSource) else NO_MODEL_HINT
        self.key = None
        self._view = (None, f"no model: {self.source.description} does not exist; {hint}")
        log.warning(self.detail)
        return {"changed": False, "key": None}

    def _unreachable(self, exc: Exception) -> dict:
        # Store errors may quote the store's URI, credentials and all: /healthz shows this to anyone.
        # ... and the server's paths: clients read it too
        reason = public_text(redact(str(exc) if isinstance(exc, SliceWiseError) else f"{type(exc).__name__}: {exc}"))
        if self.model is None:
            hint = "point --model-file at the ONNX file `make run` exports (exports/model.onnx)" \
                if isinstance(self.source, FileSource) else NO_MODEL_HINT  # a file that is not a model: no registry
            if "(make run)" in reason and hint == NO_MODEL_HINT:  # "no MLflow store yet; run the pipeline (make run)"
                hint = f"or {FILE_HINT}"
            self.detail = f"no model: {reason}; {hint}"
        else:
            self.detail = f"{self._serving_detail()}; the last check of {self.source.description} failed: {reason}"
        log.warning(self.detail)
        return {"changed": False, "key": self.key, "error": reason}
