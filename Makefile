# coldfuse — the two commands a fresh Debian 12 machine needs: `make demo`, `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
ROUNDS ?= 6

.PHONY: all deps build demo test clean

all: build

# Installs the Debian packages that are missing (idempotent; needs root or sudo).
deps:
	bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j$(JOBS)

# A server, four contributors on real digit data, $(ROUNDS) rounds, a per-round table.
demo: build
	ROUNDS=$(ROUNDS) bash scripts/demo.sh $(BUILD)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS) --timeout 600

clean:
	rm -rf $(BUILD) demo-run
