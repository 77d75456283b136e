# Two commands: `make lab` opens the workbook, `make test` passes its tests.
# Both create .venv on first use and install frugal into it (editable, with its extras).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.frugal-installed
PYTEST_NB := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600

.PHONY: lab test test-unit test-notebooks bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,kernels]'
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

test: $(STAMP)
	$(PY) -m pytest tests notebooks $(PYTEST_NB)

test-unit: $(STAMP)
	$(PY) -m pytest tests

test-notebooks: $(STAMP)
	$(PY) -m pytest notebooks $(PYTEST_NB)

bench: $(STAMP)
	$(PY) -m frugal bench

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
