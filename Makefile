# Vigil: `make run` starts the server, `make test` installs what the tests
# need and runs all of them (Go with -race, and the browser tests).

GO       ?= go
BIN      := bin
STATICCHECK_VERSION := v0.8.2

.PHONY: run build test test-go deps lint vet fmt-check clean

run: build
	$(BIN)/vigil

build:
	$(GO) build -o $(BIN)/vigil ./cmd/vigil

# deps installs what the tests need on a fresh Debian machine: Chromium
# (browser tests), ffmpeg (recording checks) and redis-server (cluster
# tests start private Redis servers of their own). Skipped when present.
deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing chromium, ffmpeg and redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ffmpeg redis-server >/dev/null; \
	fi

lint: vet fmt-check
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# One package at a time: the media and browser suites run in real time,
# and on two cores they would starve each other's timing.
test-go:
	$(GO) test -race -count=1 -p 1 -timeout 25m ./...

test: deps lint test-go

clean:
	rm -rf $(BIN)

# bench-transports compares the signaling transports (WebSocket, SSE, long
# poll, short poll, and no transport as the baseline) under a ramp of idle
# clients, on a fresh server per step pinned to CPU 0 with the generator on
# CPU 1; about 4 minutes. See docs/benchmarks.md.
.PHONY: bench-transports
bench-transports:
	$(GO) run ./tools/vigil-load transports -spawn -clients 50,100,200,400,800,1200 -events 60 -rate 20

# bench runs the short version of the forwarding benchmarks (about 2.5
# minutes): fan-out, audio room, meeting, added latency, join storm, each
# against Vigil and a stock-pion baseline forwarder on a fresh server
# pinned to CPU 0 with the generator on CPU 1, then the forwarding Go
# benchmark (BenchmarkForward in sfu, -benchmem); prints one table with
# the ratio Vigil/baseline of every figure. bench-full is the run written
# up in docs/benchmarks.md (about 12 minutes).
.PHONY: bench bench-full
bench:
	$(GO) run ./tools/vigil-load bench -short

bench-full:
	@mkdir -p $(BIN)
	$(GO) run ./tools/vigil-load bench -cpuprofile $(CURDIR)/$(BIN)/forward.cpu.prof

# bench-cluster runs the fan-out benchmark against 1 and 2 cluster nodes
# joined by a private redis-server, each node held to 0.45 of a core by a
# cgroup v1 CPU quota (needs root), subscribers entering round-robin; it
# reports the most subscribers held with each node count (about 5
# minutes; "vigil-load cluster -short" takes one). See docs/benchmarks.md.
.PHONY: bench-cluster
bench-cluster:
	$(GO) run ./tools/vigil-load cluster
