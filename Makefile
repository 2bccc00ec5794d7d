# visagent — setup, demo and tests.
#   make demo   install everything into .venv and run the demo (offline: tiny profile + real OCR;
#               make demo PROFILE=default with the real checkpoints)
#   make test   install everything into .venv and run the test suite (offline, CPU)
# Override TORCH for another platform, e.g. make test TORCH="torch torchvision".

PYTHON ?= python3
VENV ?= .venv
# The torch build is picked when installing: on aarch64 Linux without an NVIDIA GPU (no nvidia-smi and
# no /dev/nvidiactl) PyPI's CPU-only aarch64 wheels, torch==2.9.1 torchvision==0.24.1; everywhere else,
# x86_64 included with or without a GPU, torch==2.14.1 torchvision==0.29.1. PyPI's x86_64 wheels are CUDA
# builds, and its x86_64 torchvision does not load beside a CPU-only torch (torchvision::nms does not exist).
TORCH_CUDA := torch==2.14.1 torchvision==0.29.1
TORCH_CPU := torch==2.9.1 torchvision==0.24.1
TORCH ?= $(shell if [ "$$(uname -m)" = aarch64 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidiactl ]; \
  then echo '$(TORCH_CPU)'; else echo '$(TORCH_CUDA)'; fi)
# the demo's profile: tiny (offline, built locally) or default (the real checkpoints)
PROFILE ?= tiny
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test browser bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "torch build: $(TORCH) ($(if $(filter file,$(origin TORCH)),$(if $(filter $(TORCH),$(TORCH_CPU)),CPU-only: no NVIDIA GPU on this aarch64 machine,the default),set by TORCH)); to pick another: make clean, then make $(or $(MAKECMDGOALS),install) TORCH=\"torch==... torchvision==...\""
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[all,dev]'
	# groundingdino-py pins an old `supervision`; its real needs come with the gdino extra
	$(BIN)/pip install -q --no-deps 'groundingdino-py>=0.4'
	touch $@

install: $(BIN)/.installed

# headless Chromium for the browser tests: HTML report, web page (Debian package; needs root or passwordless sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

# the tiny-profile note is shown by the first command; VISAGENT_QUIET_TINY=1 keeps it to once per demo
demo: install
	$(BIN)/visagent ask sample:coffee "How many cups are there?" --profile $(PROFILE)
	VISAGENT_QUIET_TINY=1 $(BIN)/visagent ask sample:page "What does the page say?" --profile $(PROFILE) --planner script:examples/read_page.yaml

test: install browser
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks.loop_overhead
	$(BIN)/python -m benchmarks.tools

clean:
	rm -rf $(VENV) .pytest_cache
