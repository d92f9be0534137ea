# fan — the two commands a newcomer needs:
#   make demo   two hosts, their agents, a fan, containers pinging each other over it
#   make demo-docker   the same with real Docker containers (fan-docker-ipam)
#   make test   everything CI runs: format, lint, unit, property, netns and e2e tests
# Both install missing Debian/PyPI packages first (as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Incremental caches doubled the debug target's size for no gain on a one-shot
# build (CI, a newcomer's first `make test`); set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL ?= 0
# fan-client/tls: the CLI and SDK speak mTLS to an agent's TCP listener (the e2e tests use it).
FEATURES ?= --features fan-client/tls

.PHONY: all deps build build-release test test-unprivileged check-style check-proto unit demo demo-docker bench test-kernels fuzz clean sdk

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace $(FEATURES) --bins --examples

build-release: deps
	$(CARGO) build --release --workspace $(FEATURES) --bins

check-style:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace $(FEATURES) --all-targets -- -D warnings

# The API contract: buf lint (STANDARD + COMMENTS) and buf breaking against
# proto/api-v1.binpb, the image of the released v1 API. A wire- or
# JSON-breaking change fails here unless it moves to a new package version.
BUF ?= target/buf/node_modules/.bin/buf
check-proto: deps
	cd proto && $(abspath $(BUF)) lint
	cd proto && $(abspath $(BUF)) breaking --against api-v1.binpb

# Namespace tests create real hosts and agents; two test threads keep a
# 2-core machine (the size CI runs on) responsive.
test: build check-style check-proto
	$(CARGO) test --workspace $(FEATURES) --no-fail-fast -- --test-threads=2
	scripts/test-unprivileged.sh

# The agent's, SDK's, CLI's, data plane's and fan-core's unit and API tests
# again as the user nobody: they run on the agent's in-memory data plane and
# must never need root.
test-unprivileged: build
	scripts/test-unprivileged.sh

# The Python wheel (client/python) and the Go module (client/go), generated from proto/ (the e2e test
# tests/tests/sdk_clients.rs builds and runs both against a real agent).
sdk: deps
	client/go/generate.sh
	target/pyenv/bin/python -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w target/sdk client/python

demo: build
	scripts/demo.sh

# The same with real Docker (docker.io): fan-docker-ipam gives every address.
demo-docker: build
	scripts/demo-docker.sh

bench: build-release
	scripts/bench.sh

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the config parser, the
# underlay/overlay/name parsers and the agent's request validation, from
# protobuf bytes too: FUZZ_SECONDS in all (default 60), fails on any panic.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) agent/fuzz/run.sh

test-kernels: build
	tests/vm/run-kernel-suite.sh

clean:
	$(CARGO) clean
