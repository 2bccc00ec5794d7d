# visagent — setup, demo and tests.
#   make demo   install everything into .venv and run the demo (offline: tiny profile + real OCR;
#               make demo PROFILE=default with the real checkpoints)
#   make test   install everything into .venv and run the test suite (offline, CPU)
# Override TORCH for another platform, e.g. make test TORCH="torch torchvision".

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
# the demo's profile: tiny (offline, built locally) or default (the real checkpoints)
PROFILE ?= tiny
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test browser bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[all,dev]'
	# groundingdino-py pins an old `supervision`; its real needs come with the gdino extra
	$(BIN)/pip install -q --no-deps 'groundingdino-py>=0.4'
	touch $@

install: $(BIN)/.installed

# headless Chromium for the HTML report test (Debian package; needs root or passwordless sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (sudo apt-get install chromium) for the report browser test"; fi; }

demo: install
	$(BIN)/visagent ask sample:coffee "How many cups are there?" --profile $(PROFILE)
	$(BIN)/visagent ask sample:page "What does the page say?" --profile $(PROFILE) --planner script:examples/read_page.yaml

test: install browser
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks.loop_overhead
	$(BIN)/python -m benchmarks.tools

clean:
	rm -rf $(VENV) .pytest_cache
