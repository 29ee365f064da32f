# SliceWise: every entry point a user needs. Only `python3` must exist; everything else is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The install is skipped when requirements.txt is unchanged since the last successful install.
REQ_HASH := $(shell cat requirements.txt 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# DVC stages call .venv/bin/python; putting the venv first on PATH also serves tools they start.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MPLBACKEND := Agg

PROFILE ?=
PYTEST_ARGS ?=

.PHONY: setup run test serve mlflow-ui prefect-ui worker bench lock clean-data brats-env

setup: $(STAMP)

# A venv whose python has no pip is one `python3 -m venv` left half made (Debian without python3-venv): made anew.
# No prerequisite: the stamp's name carries requirements.txt's hash, so new content makes a new stamp, while a
# checkout that only touched the file's time does not reinstall. The old stamps go before pip starts: an install that
# fails half way leaves a venv no stamp vouches for, which a checkout of the old pins would otherwise have taken as is.
$(STAMP):
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "$(PYTHON) -m venv failed: on Debian/Ubuntu install python3-venv, then run make again" >&2; exit 1; }; }
	@rm -f $(VENV)/.installed-*
	$(BIN)/python -m pip install --disable-pip-version-check -q $$(grep -E '^(pip|setuptools)==' requirements.txt)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@
	@echo "dependencies installed into $(VENV)"

# `make run PROFILE=baseline` switches the profile in params.yaml first; DVC then reruns what depends on it.
run: setup
	@if [ -n "$(PROFILE)" ]; then $(BIN)/python -m tasks set profile=$(PROFILE); fi
	@# params.yaml checked before DVC, which removes a stage's outputs before the stage itself could refuse a value
	@$(BIN)/python -m tasks check
	$(BIN)/dvc repro
	@# MLFLOW_TRACKING_URI is no DVC dependency: a model registered in another store is registered in this one too
	@$(BIN)/python -m tasks store-check || $(BIN)/dvc repro --force --single-item register
	@$(BIN)/python -m tasks summary

# The end-to-end tests start real PostgreSQL, MLflow, Prefect, a DVC S3 remote and a headless Chromium:
# the two scripts install the Debian packages they need when missing (a no-op when present).
test: setup brats-env
	@scripts/install_services.sh
	@scripts/install_browser.sh
	@# pytest's exit 5 is "no test collected" (a PYTEST_ARGS selection that matched none): said, not failed
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; \
		echo "pytest collected no tests for PYTEST_ARGS='$(PYTEST_ARGS)' (exit 5)"; }

# The organisers' BraTS evaluation (brats-evaluation, panoptica) needs pandas<3; the project pins pandas 3, so it gets
# its own virtualenv, used only to cross-check our region metrics (tests/test_brats_eval.py, and evaluate when present).
BRATS_VENV := .venv-brats
BRATS_STAMP := $(BRATS_VENV)/.installed-$(shell cat requirements-brats.txt 2>/dev/null | sha256sum | cut -c1-16)

brats-env: $(BRATS_STAMP)

$(BRATS_STAMP):
	@$(BRATS_VENV)/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf $(BRATS_VENV); \
		$(PYTHON) -m venv $(BRATS_VENV) || { rm -rf $(BRATS_VENV); echo "$(PYTHON) -m venv failed" >&2; exit 1; }; }
	@rm -f $(BRATS_VENV)/.installed-*
	$(BRATS_VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-brats.txt
	@touch $@
	@echo "brats-evaluation installed into $(BRATS_VENV)"

# MALLOC_ARENA_MAX=2: glibc would keep each request thread's freed memory in a pool of its own (docs/security.md)
serve: setup
	MALLOC_ARENA_MAX=2 $(BIN)/python -m serve

# The store the pipeline uses: MLFLOW_TRACKING_URI when set (a database URI is served here; a server is one already)
mlflow-ui: setup
	@case "$${MLFLOW_TRACKING_URI:-}" in http://*|https://*) \
		echo "MLFLOW_TRACKING_URI is a tracking server already: open $$MLFLOW_TRACKING_URI"; exit 0;; esac; \
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} $(BIN)/mlflow server \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --artifacts-destination ./mlartifacts \
		--host 127.0.0.1 --port 5000

prefect-ui: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=$${PREFECT_SERVER_ANALYTICS_ENABLED:-false} \
		$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# A Prefect worker on the process pool `slicewise-pool` (created when missing) running the pipeline deployment
# `slicewise-pipeline/worker`; needs a Prefect server (`make prefect-ui`, or PREFECT_API_URL).
worker: setup
	SLICEWISE_PYTHON=$(CURDIR)/$(BIN)/python scripts/prefect_worker.sh

bench: setup
	$(BIN)/python -m bench

# Regenerate the pinned lock from requirements.in (run on a machine like CI's). A package installed from a local
# file or URL would freeze as `name @ file:///...`, which no other machine can install: refused.
CUDA_WHEELS := ^((nvidia-|cuda-)[^=]+==[^;]+|triton==[^;]+)$$
lock: setup
	$(BIN)/python -m pip install -q -r requirements.in
	@# --all: pip and setuptools too (torch needs setuptools, and a fresh venv's own would be whatever it came with);
	@# CUDA wheels only where torch itself asks for them (Linux), so the lock installs elsewhere too
	$(BIN)/python -m pip freeze --all --exclude-editable | sed -E 's/$(CUDA_WHEELS)/\1; platform_system == "Linux"/' \
		> requirements.txt.new
	@if grep -n ' @ ' requirements.txt.new; then rm -f requirements.txt.new; echo "make lock: the lines above point \
		at local files or URLs; reinstall those packages from the registry first" >&2; exit 1; fi
	mv requirements.txt.new requirements.txt

clean-data:
	rm -rf data checkpoints exports reports/training reports/plots
