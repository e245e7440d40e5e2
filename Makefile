# Re:Mind. `make run` sets up and runs the GIF track; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.setup-done
GEN := gen/.generated
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/remind/v1/*.proto)
APT_PACKAGES := ffmpeg

.PHONY: setup run test up down bench lint proto clean system-packages

setup: $(SETUP) $(GEN) $(BUF)

# Debian packages: installed only when a command is missing (apt-get update once, first).
system-packages:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }

$(SETUP): requirements.txt pyproject.toml
	$(MAKE) system-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	# Only for the face photos its wheel ships; its runtime dependencies are not needed.
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps insightface==2.1
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	echo "$(CURDIR)/gen" > "$$($(PY) -c 'import site; print(site.getsitepackages()[0])')/remind_gen.pth"
	touch $@

# Generated gRPC code: one package (remind.v1) under gen/, never edited by hand.
$(GEN): $(SETUP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

proto: $(GEN)

$(BUF):
	npm install --prefix .tools --no-audit --no-fund --loglevel=error @bufbuild/buf@1.75.0

run: setup
	$(PY) -m services.cli demo

test: setup
	$(PY) -m ruff check services tests benchmarks
	$(PY) -m pytest

up: setup
	$(PY) -m services.cli up

down:
	@if [ -x $(PY) ]; then $(PY) -m services.cli down; fi

bench: setup
	$(PY) -m benchmarks.gif_job

lint: setup
	$(PY) -m ruff check services tests benchmarks
	$(BUF) lint

clean: down
	rm -rf $(VENV) gen .stack .tools out
