# neonproxy: `make run` serves with config.yaml, `make test` runs every test.
# Both install what is missing first (PostgreSQL 15 via apt-get).

GO       ?= go
export GOTOOLCHAIN ?= local
CONFIG   ?= config.yaml
BIN      := bin/neonproxy
TESTFLAGS ?= -race -count=1 -timeout 25m

.PHONY: all deps consul build run test test-short vet fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh

# Consul agent v1.14.11 for the tests that run a real `consul agent -dev` on
# loopback. Consul is not in Debian: scripts/build-consul.sh builds it from the
# Go module proxy through the tools module tools/consul (its own go.mod, so
# `./...` never includes it) into NEONPROXY_CACHE, which survives between runs;
# the build (a few minutes cold) is skipped when the binary is already there.
# `make test` passes the binary's path to the tests in NEONPROXY_CONSUL.
NEONPROXY_CACHE  ?= $(HOME)/.cache/neonproxy
NEONPROXY_CONSUL  = $(NEONPROXY_CACHE)/consul-1.14.11/consul

consul:
	@NEONPROXY_CACHE='$(NEONPROXY_CACHE)' scripts/build-consul.sh >/dev/null

build:
	$(GO) build -o $(BIN) ./cmd/neonproxy

run: deps build
	./$(BIN) serve --config $(CONFIG)

vet:
	$(GO) vet ./...

# Unit tests, fuzz-corpus replays and integration tests against real
# PostgreSQL 15 computes with real clients (pgx, psql, pgbench), and against
# a real Consul agent (NEONPROXY_CONSUL, see `consul` above).
test: vet consul
	@scripts/install-deps.sh --test
	NEONPROXY_CONSUL='$(NEONPROXY_CONSUL)' $(GO) test $(TESTFLAGS) ./...

test-short: vet
	$(GO) test -short $(TESTFLAGS) ./...

# Fuzz each wire parser for FUZZTIME (a duration, or e.g. 10000000x execs) and
# keep the grown corpora under testdata/fuzz/, which `make test` replays
# (scripts/fuzz.sh; crashers land there too).
FUZZTIME ?= 60s
fuzz:
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' scripts/fuzz.sh

# Latency and throughput against direct PostgreSQL and PgBouncer; prints a
# report. Not part of `make test` (timings are not pass/fail here).
bench: build
	@scripts/install-deps.sh --bench
	$(GO) run ./bench -neonproxy ./$(BIN)

clean:
	rm -rf bin
