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

# Every benchmark, then one table with the command behind each figure: benchmarks/RESULTS.md.
# Several hours on 2 cores (3 seeds of every training run; see benchmarks/README.md). Each
# script is resumable: a rerun reuses every finished run. The runtime is measured on seed 0's
# int8 student from export_table.py, at the card's hop and at 0.2 s.
BENCH_OUT := benchmarks/out
BENCH_INT8 := $(BENCH_OUT)/export/default_teacher_small_t3000/seed0/tcn_small_d1500/student_int8.tflite
bench: venv
	$(PY) benchmarks/export_table.py --work $(BENCH_OUT)/export --out $(BENCH_OUT)/export_table.json
	$(PY) benchmarks/runtime_bench.py --skip-builtin --model $(BENCH_INT8) \
	    --out $(BENCH_OUT)/runtime_bench.json
	$(PY) benchmarks/runtime_bench.py --skip-builtin --model $(BENCH_INT8) \
	    --hop-s 0.2 --out $(BENCH_OUT)/runtime_bench_hop0.2.json
	$(PY) benchmarks/lookahead_bench.py --model $(BENCH_INT8) --data $(BENCH_OUT)/export/synth_default \
	    --out $(BENCH_OUT)/lookahead_bench.json
	$(PY) benchmarks/soak.py --out $(BENCH_OUT)/soak
	$(PY) benchmarks/train_table.py --work $(BENCH_OUT)/train --out $(BENCH_OUT)/train/train_table.json
	$(PY) benchmarks/results.py --out-dir $(BENCH_OUT) --write benchmarks/RESULTS.md

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
