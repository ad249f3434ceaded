PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser test test-all demo bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# tests/test_explain_browser.py renders the explain pages in Debian's headless Chromium,
# installed here when absent (CI starts as root on a clean machine); where it cannot be
# installed the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian package) for the browser test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	      >/dev/null 2>&1 || echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium is not installed (apt-get install chromium, as root): the browser test will skip"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest

test-all: $(STAMP) browser
	$(BIN)/python -m pytest -m ""

demo: $(STAMP)
	$(BIN)/kdistill run configs/demo.yaml

clean:
	rm -rf runs .pytest_cache
