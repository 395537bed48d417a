# XWin — two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.xwin-installed
TESTSTAMP := $(VENV)/.xwin-test-installed
# system libraries for the Qt/VTK viewer tests under Xvfb, and dicom3tools (dciodvfy checks the DICOM we write)
# (CI runs as root or a password-less sudoer)
APT_TEST := dicom3tools xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 \
  libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libgl1 libegl1 libglx-mesa0 \
  libgl1-mesa-dri libosmesa6 libfontconfig1 libdbus-1-3

.PHONY: demo test bench screenshots install clean

$(STAMP): XWinCore/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e 'XWinCore[test]'
	touch $@

$(TESTSTAMP): $(STAMP) Resources/requirements-test-slicer.txt Makefile
	$(PIP) install -r Resources/requirements-test-slicer.txt
	$(PIP) install -q --no-deps --target $(VENV)/pydicom24 pydicom==2.4.3  # 3D Slicer 5.10's (test_pydicom24)
	command -v xvfb-run >/dev/null && command -v dciodvfy >/dev/null || (SUDO=; sudo -n true 2>/dev/null && SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(APT_TEST))
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xwin demo --out out/demo

test: $(TESTSTAMP)
	$(VENV)/bin/ruff check --config XWinCore/pyproject.toml XWinCore bench Testing XWinSlicer
	$(PY) -m mypy --config-file XWinCore/pyproject.toml XWinCore/xwin
	$(PY) -m pytest -q -ra XWinCore/tests Testing/Python

bench: $(STAMP)
	$(PIP) install -e 'XWinCore[bench]'
	$(PY) bench/drr.py --out docs/benchmarks.md
	$(PY) bench/recon.py --write-docs
	command -v plastimatch >/dev/null || (SUDO=; sudo -n true 2>/dev/null && SUDO=sudo; \
	  $$SUDO apt-get install -y -qq --no-install-recommends plastimatch) || echo "no plastimatch: bench/cli.py skips it"
	$(PY) bench/cli.py --out docs/benchmarks.md
	# DiffDRR for bench/register.py in its own folder, without its Jupyter/PyVista dependencies (the registration path
	# needs only these); the core's own environment stays as the tests see it
	$(PIP) install --no-deps --target $(VENV)/diffdrr diffdrr==0.6.1 kornia==0.9.0 kornia_rs==0.2.0 fastcore==2.2.41 \
	  pandas==3.1.1 python-dateutil==4.0.0 tzdata six
	PYTHONPATH=$(VENV)/diffdrr $(PY) bench/register.py --out docs/benchmarks.md

# regenerate the viewer pictures in docs/screenshots (the tests themselves write only to temporary folders)
screenshots: $(TESTSTAMP)
	XWIN_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q Testing/Python/test_viewer.py

clean:
	rm -rf $(VENV) out
