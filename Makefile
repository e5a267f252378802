# Two commands: `make demo` and `make test`. Both create .venv on first use and reinstall when a
# requirements file changes (the stamp depends on them), so a fresh clone needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first, pinned to the CPU wheel, so nothing later pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench lint clean-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

DEMO_PROMPT ?= Show me an image of a red bus on a city street. Let me hear an audio of rain falling on a roof.

demo: $(STAMP)
	$(PY) train.py --config configs/tiny.py
	$(PY) -m spider_jax.generate --config configs/tiny.py --checkpoint runs/tiny --prompt "$(DEMO_PROMPT)" \
		--out runs/tiny/generated

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/llama_step.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
