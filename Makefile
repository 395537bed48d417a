# XWin — two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.xwin-installed

.PHONY: demo test bench install clean

$(STAMP): XWinCore/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e 'XWinCore[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xwin demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -ra XWinCore/tests Testing/Python

bench: $(STAMP)
	$(PIP) install -e 'XWinCore[bench]'
	$(PY) bench/drr.py --out docs/benchmarks.md

clean:
	rm -rf $(VENV) out
