# Two entry points (README.md): `make train` runs the main job on the embedded defaults,
# `make test` runs ruff and the test suite. Both create or refresh .venv first.
#
# .venv is a link to a virtual environment cached outside the clone, keyed by a hash of the
# dependency pins in pyproject.toml, so a fresh CI clone reuses the ~6 GB install instead of
# rebuilding it. A cache entry counts as complete only once its `.complete` marker exists.
PYTHON ?= python3
VENV_CACHE ?= $(HOME)/.cache/apcnet/venvs
PIN_HASH := $(shell $(PYTHON) tools/pin_hash.py)
VENV_DIR := $(VENV_CACHE)/$(PIN_HASH)
VENV_PY := .venv/bin/python

.PHONY: venv train test test-fast format clean-venv

venv:
	@$(PYTHON) tools/make_venv.py --python $(PYTHON) --cache-dir "$(VENV_DIR)" --link .venv

train: venv
	$(VENV_PY) jobs/train.py

test: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(VENV_PY) -m pytest

# While you work: ruff and every test that starts no Ray, no server and no job.
test-fast: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(VENV_PY) -m pytest -m "not integration"

format: venv
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean-venv:
	rm -rf .venv "$(VENV_DIR)"
