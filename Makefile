# `make test` and `make serve` work on a fresh machine with only Python installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py and the C source too: an editable install compiles the kernels (voicebot/_dsp.c) once, so a
# change to it needs a reinstall.
$(STAMP): pyproject.toml setup.py voicebot/_dsp.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check voicebot handlers tests bench
	$(BIN)/ruff format --check voicebot handlers tests bench

typecheck: $(STAMP)
	$(BIN)/mypy voicebot

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

serve: $(STAMP)
	$(BIN)/python -m voicebot serve --handler handlers.echo:EchoBot --host 127.0.0.1 --port 8080

bench: $(STAMP)
	$(BIN)/python bench/dsp.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build voicebot/_dsp.*.so
