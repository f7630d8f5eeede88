# Magpie — `make run` starts a demo server, `make test` runs every test.
GO      ?= go
BIN     := bin/magpie
DATA    ?= ./data
# Count-based: a duration -fuzztime can fail spuriously with "context
# deadline exceeded" at its end on go1.26 (golang/go#75804).
FUZZTIME ?= 1000000x

.PHONY: all build run test test-go test-js vet fmt-check deps bench fuzz fuzz-smoke clean

all: build

# -buildvcs=auto: stamp the git revision into the binary (magpie version,
# /metrics, bench reports) even where GOFLAGS turns stamping off.
build:
	$(GO) build -buildvcs=auto -o $(BIN) ./cmd/magpie

# Builds and starts the server with an embedded Pebble store under ./data
# and the demo users alice, bob and carol (password: password), on
# loopback only: `make run BIND=0.0.0.0` exposes it to the network, with
# its well-known demo passwords and open sign-up (the server warns).
BIND ?= 127.0.0.1
run: build
	$(BIN) serve --data $(DATA) --demo --listen $(BIND):7070 --http $(BIND):8080

# npm packages used by cross-client tests (the `ws` interop client).
deps:
	@if command -v npm >/dev/null 2>&1; then \
		npm install --no-audit --no-fund --silent --prefix wsproto/testdata/node; \
	else echo "npm not found: the Node interop test will be skipped (CI installs it)"; fi

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: deps vet test-js test-go fuzz-smoke

test-go:
	# -p 1: packages one at a time, so the timer tests of one package do not
	# share the 2 cores with the browser and load tests of another.
	$(GO) test -race -count=1 -p 1 -timeout 30m ./...

test-js:
	@if command -v node >/dev/null 2>&1 && [ -d web/sdk ]; then node --test web/sdk/; \
	else echo "node not found: JS SDK unit tests skipped"; fi

# A few seconds of each fuzz target; `make fuzz` runs them longer.
fuzz-smoke:
	$(MAKE) --no-print-directory fuzz FUZZTIME=20000x

fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
