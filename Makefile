# erquant — two commands: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

# Debian packages napari/Qt needs to render under a virtual X display (Mesa GL).
NAPARI_DEBS := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libopengl0 \
	libxkbcommon0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0 \
	libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libxrender1 libxi6 libsm6 libice6 \
	libglib2.0-0
# OpenCL on the CPU for the pyclesperanto reference in `erquant bench`.
BENCH_DEBS := pocl-opencl-icd
# Headless browser that renders report.html in tests/test_analysis_report.py.
REPORT_DEBS := chromium

.PHONY: demo test bench bench-batch accuracy lint sysdeps-napari sysdeps-bench sysdeps-report clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e ".[test,bench,train]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/erquant demo -o demo_output

# Installs missing Debian packages when running as root; otherwise says what to install.
sysdeps-napari:
	@missing=$$(for p in $(NAPARI_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages for the napari tests: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "The napari tests need these Debian packages; run as root:"; \
			echo "  apt-get update && apt-get install -y $$missing"; exit 1; \
		fi; \
	fi

sysdeps-bench:
	@dpkg-query -W -f='$${Status}\n' $(BENCH_DEBS) 2>/dev/null | grep -q "install ok installed" || \
	{ if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(BENCH_DEBS) >/dev/null; \
	  else echo "optional: apt-get install $(BENCH_DEBS) (pyclesperanto reference on the CPU)"; fi; }

sysdeps-report:
	@dpkg-query -W -f='$${Status}\n' $(REPORT_DEBS) 2>/dev/null | grep -q "install ok installed" || \
	{ if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages for the report test: $(REPORT_DEBS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(REPORT_DEBS) >/dev/null; \
	  else echo "The report.html browser test needs: apt-get install $(REPORT_DEBS) (skipped without it)"; fi; }

test: $(VENV)/.installed-test sysdeps-napari sysdeps-report
	xvfb-run -a -s "-screen 0 1280x1024x24" $(PY) -m pytest tests src/erquant --doctest-modules $(PYTEST_ARGS)

bench: $(VENV)/.installed-test sysdeps-bench
	$(VENV)/bin/erquant bench

bench-batch: $(VENV)/.installed
	$(PY) benchmarks/batch.py

accuracy: $(VENV)/.installed
	$(PY) benchmarks/real_accuracy.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src plugins tests benchmarks

clean:
	rm -rf demo_output sample_data/demo_plate benchmarks/results .pytest_cache
