# meerkit — two commands: `make demo` and `make test`. Each builds .venv from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The local CPU wheel; a bare `torch` would pull a multi-GB CUDA build. GPU users:
# install your own torch into the venv first, then `pip install -e .[train]`.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= all,mic
SYSTEM_PACKAGES := mosquitto mosquitto-clients portaudio19-dev
DEMO_DIR ?= demo_out

.PHONY: demo test bench lint clean sysdeps venv

# System packages the tests use (a real broker, PortAudio headers for pyaudio).
sysdeps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@echo ">> creating $(VENV) (torch pinned to $(TORCH_PIN))"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

venv: sysdeps $(VENV)/.installed

demo: venv
	$(VENV)/bin/meerkit demo --out $(DEMO_DIR)

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: venv
	@ls benchmarks/*.py >/dev/null 2>&1 && for b in benchmarks/*.py; do $(PY) $$b || exit 1; done || echo "no benchmarks yet"

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
