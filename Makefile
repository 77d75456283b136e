# Two commands: `make lab` opens the workbook, `make test` passes its tests.
# Both create .venv on first use and install frugal into it (editable, with its extras).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.frugal-installed
# The browser tests (tests/ui) drive Debian's chromium through Playwright for Python; Playwright downloads no browser.
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_NB := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600

.PHONY: lab nbstrip test test-unit test-ui test-notebooks bench clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,kernels,ui]'
	touch $(STAMP)

# Debian/Ubuntu: install chromium with apt when missing. Elsewhere say how; tests/ui then skip with that reason.
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
	  ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium); \
	else echo "no apt-get here: install Chromium at $(CHROMIUM) to run the browser tests (tests/ui skip without it)"; fi

# JupyterLab on 127.0.0.1 only, with Jupyter's token (it prints the address to open); --allow-root only as root
# (Docker, cloud VMs). Saved lessons are stripped of outputs (frugal/nbstrip.py as Jupyter's pre-save hook, and
# as git's clean filter for other editors): running a lesson leaves `git status` clean.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
lab: $(STAMP) nbstrip
	$(VENV)/bin/jupyter lab notebooks/ --ServerApp.ip=127.0.0.1 \
	  --ContentsManager.pre_save_hook=frugal.nbstrip.pre_save_hook $(ROOT_FLAG)

nbstrip:
	git config filter.nbstrip.clean '"$(abspath $(PY))" frugal/nbstrip.py'
	git config filter.nbstrip.smudge cat

# Unit tests, the notebooks in JupyterLab in a real browser (tests/ui), the notebooks under ipywidgets 7.7.1
# (tests/test_ipywidgets7.py), and the notebooks under nbval.
test: $(STAMP) chromium
	$(PY) -m pytest tests notebooks $(PYTEST_NB)

test-unit: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/ui --ignore=tests/test_ipywidgets7.py

test-ui: $(STAMP) chromium
	$(PY) -m pytest tests/ui

test-notebooks: $(STAMP)
	$(PY) -m pytest notebooks $(PYTEST_NB)

bench: $(STAMP)
	$(PY) -m frugal bench

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts build/ipywidgets-7.7.1
