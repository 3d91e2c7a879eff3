# Two entry points: `make run` (set up and start the app) and `make test` (set up and test).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
MODEL  ?= sample:digits_cnn
SUDO_HINT = run as root, or install them yourself:

.PHONY: run test test-fast setup test-setup graphviz chromium lint bench weights clean

# The view cache warmed first (a no-op when it holds the model): the graph then draws at once.
run: setup graphviz
	$(PY) -m workbench.drawing.viewcache warm --model "$(MODEL)"
	$(PY) -m streamlit run app.py --server.address=127.0.0.1 --server.port=$(PORT) \
		--server.headless=true --browser.gatherUsageStats=false -- --model "$(MODEL)"

test: test-setup graphviz chromium lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The inner loop (under 2 minutes): no browser, no subprocess CLI runs, no AppTest sessions.
test-fast: test-setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not browser"

lint: test-setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup graphviz
	$(PY) -m benchmarks

weights: setup
	$(PY) -m sample_models.train

setup: $(VENV)/.installed
test-setup: $(VENV)/.installed-test

# torch is pinned to the CPU wheel that pip finds on local disk; uv and poetry would not.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

graphviz:
	@command -v dot >/dev/null || $(MAKE) --no-print-directory apt PKGS="graphviz"

chromium:
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory apt PKGS="chromium chromium-driver"

apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(PKGS) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS) >/dev/null; \
	else \
		echo "missing: $(PKGS); $(SUDO_HINT) sudo apt-get install $(PKGS)" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
