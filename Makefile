# The two commands of the README: `make demo` and `make test`. Each sets up everything on a fresh
# Debian/Ubuntu machine with Python 3.11 (Debian packages, .venv, pinned CPU torch, the project),
# and a second run re-uses the environment (the stamp file below), so it starts in seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spatia-installed
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= out/demo
# open3d links libGL / libEGL / libX11 / libusb at import time (no display needed); numba's OpenMP layer needs
# libgomp; the browser tests drive Debian's chromium through chromium-driver (nothing is downloaded at test time)
DEBIAN_PACKAGES := libusb-1.0-0 libgomp1 libgl1 libegl1 libx11-6 chromium chromium-driver

.PHONY: demo test setup system-deps clean bench

demo: $(STAMP)
	$(VENV)/bin/spatia demo --out $(DEMO_OUT)

# Ray's test files run in a pytest process of their own, after the rest: Ray starts its daemons through a
# subprocess preexec_fn, so the fork's child runs Python and frees the other threads' thread-local state; in a
# worker that had run the web tests, that freed a PyAV swscale context whose worker threads do not exist in the
# child, and the child hung before its exec (session 37, a clean clone: the Ray cluster fixture waited forever).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --ignore-glob='tests/test_ray_*.py'
	$(PY) -m pytest -q $(wildcard tests/test_ray_*.py)

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

setup: $(STAMP)

# Install whatever Debian packages are missing (root or sudo).
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	# every extra, [cluster] (Ray, for serve --ray and tests/test_ray_*.py) included; a slim client is `pip install .`
	$(PY) -m pip install -q -e '.[all,cluster]'
	# buf (a Go binary from the npm registry) for tests/test_ops_docs.py's `buf lint`; optional where npm is missing
	-command -v npm >/dev/null && npm install -q --no-audit --no-fund --prefix $(VENV)/buf @bufbuild/buf >/dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) out build *.egg-info
