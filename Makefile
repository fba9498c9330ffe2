# sealink developer entry points. `make test` and `make demo` run `setup` first and are
# idempotent: setup only reinstalls when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STAMPS ?= 50

.PHONY: setup system test test-slow lint demo bench fuzz install

setup: system $(STAMP)

system:
	@bash tools/setup-system.sh

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[emulator,ble,tpm,tools,fleet,console,test]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check host protocol tools hil-tests firmware boards
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: lint
	$(VENV)/bin/pytest

# The tests marked slow (each over ~30 s), kept out of `make test` so CI's run stays short.
test-slow: setup
	$(VENV)/bin/pytest -m slow

demo: setup
	$(VENV)/bin/sealink demo --stamps $(STAMPS)

bench: setup
	$(PY) tools/bench.py

fuzz: setup
	$(PY) tools/fuzz.py

# The gateway as a systemd service (as root): tools/install.sh says what goes where, and why.
# DESTDIR stages it under another root; PREFIX (/usr/local) is where the `sealink` link goes.
install:
	DESTDIR='$(DESTDIR)' PREFIX='$(or $(PREFIX),/usr/local)' bash tools/install.sh
