# coldfuse — the two commands a fresh Debian 12 machine needs: `make demo`, `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
ROUNDS ?= 6

.PHONY: all deps deps-sanitizers build demo demo-text demo-python experiment test test-asan test-tsan \
	fuzz format format-check bench bench-text build-pypi-torch test-pypi-torch clean

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

# ColD Fusion over a real pretrained transformer (all-MiniLM-L6-v2 from PyPI) on real
# sentiment data: two contributors, one round, a few-shot probe on an unseen task.
# See docs/encoders.md. STEPS=60 optimizer steps per contributor.
demo-text: build
	STEPS=$(or $(STEPS),60) bash scripts/demo_text.sh $(BUILD)

# demo-text with its second contributor in Python (transformers.Trainer + coldfuse.hf).
demo-python: build
	PYTHON=1 STEPS=$(or $(STEPS),60) bash scripts/demo_text.sh $(BUILD)

# ColD Fusion's evaluation protocol with real processes (scripts/experiment.py): per method
# and seed a coldfused, contributor daemons on each round's sampled seen tasks, probes of
# every new base on unseen (few-shot, full) and seen tasks; every number in
# experiment-run/NAME/results.json, plots and a table in docs/experiments.md. The CPU
# configuration takes about 45 min on 2 cores; EXPERIMENT_CONFIG=experiments/plateau.json
# runs ColD Fusion's mean for 8 rounds (about 40 min), experiments/gpu.json is for a CUDA
# build. Resumes when run again. EXPERIMENT_ARGS passes more, e.g.
# EXPERIMENT_ARGS="--tasks_dir=my-tasks --seen=rest --unseen=a,b --model=my-encoder".
# See docs/experiments.md.
EXPERIMENT_CONFIG ?= experiments/cpu.json
EXPERIMENT_ARGS ?=
EXPERIMENT_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,/usr/bin/python3)
experiment: build
	EXPERIMENT_INVOKED_AS="make experiment$(if $(filter-out experiments/cpu.json,$(EXPERIMENT_CONFIG)), EXPERIMENT_CONFIG=$(EXPERIMENT_CONFIG))$(if $(EXPERIMENT_ARGS), EXPERIMENT_ARGS='$(EXPERIMENT_ARGS)')" \
	  $(EXPERIMENT_PYTHON) scripts/experiment.py $(EXPERIMENT_CONFIG) --bin_dir=$(BUILD) --prepare \
	  $(EXPERIMENT_ARGS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS) --timeout 600

# The whole project built with clang and instrumented, then the whole suite: ASan+UBSan in
# build-asan/, TSan in build-tsan/. The processes the tests start are instrumented too; every
# report lands in build-*/sanitizer-logs/ and fails the run. CTEST_ARGS passes more to ctest
# (e.g. CTEST_ARGS="-R E2eTest"). See README.md, "Tests".
SAN_CXX ?= clang++-14
CTEST_ARGS ?=
SAN_CONFIGURE = cmake -S . -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=$(SAN_CXX)

deps-sanitizers:
	bash scripts/install-deps.sh build sanitizers

test-asan: deps-sanitizers
	$(SAN_CONFIGURE) -B build-asan -DCOLDFUSE_SANITIZE=address,undefined
	cmake --build build-asan -j$(JOBS)
	ctest --test-dir build-asan --output-on-failure -j$(JOBS) $(CTEST_ARGS)

test-tsan: deps-sanitizers
	$(SAN_CONFIGURE) -B build-tsan -DCOLDFUSE_SANITIZE=thread
	cmake --build build-tsan -j$(JOBS)
	ctest --test-dir build-tsan --output-on-failure -j$(JOBS) $(CTEST_ARGS)

# libFuzzer (clang 14, ASan+UBSan) on the targets in fuzz/, built in build-fuzz/: each runs
# FUZZ_SECONDS from its seeds in fuzz/corpus/<name>/, keeping new inputs in
# build-fuzz/corpus/<name>/ and crashes in build-fuzz/crashes/<name>/ (which fail the run);
# build-fuzz/fuzz-hours.tsv gets a line per target and run. FUZZ_TARGET=name runs one.
# See docs/development.md, "Fuzzing".
FUZZ_SECONDS ?= 60
FUZZ_TARGET ?=
FUZZ_CXX ?= clang++-14

fuzz: deps-sanitizers
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) -DCOLDFUSE_FUZZ=ON
	cmake --build build-fuzz -j$(JOBS) --target $(if $(FUZZ_TARGET),$(FUZZ_TARGET)_fuzz,fuzz_targets)
	bash scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGET)

# clang-format 14 with .clang-format (Google style, 100 columns) over every tracked .cc/.h:
# `format` rewrites the files; `format-check` lists each difference and fails if there is one.
CLANG_FORMAT ?= clang-format-14
FORMAT_FILES = git ls-files -z '*.cc' '*.h'

format:
	bash scripts/install-deps.sh format
	$(FORMAT_FILES) | xargs -0 $(CLANG_FORMAT) -i

format-check:
	bash scripts/install-deps.sh format
	$(FORMAT_FILES) | xargs -0 $(CLANG_FORMAT) --dry-run --Werror

# Large-model benchmark (not part of `make test`): limits of this machine, coldfuse per K,
# numpy/PyTorch baselines; writes bench/results/latest.json. See docs/benchmarks.md.
# e.g. make bench BENCH_ARGS="--model_mb 256 --k 2,4"
BENCH_PYTHON ?= /usr/bin/python3
BENCH_ARGS ?=
bench: build
	$(BENCH_PYTHON) bench/bench.py --build $(BUILD) $(BENCH_ARGS)

# Fine-tuning steps/s of MiniLM-L6 (batch 32, sequence 128): the client's trainer against
# PyTorch (Debian's, and PyPI's when installed). See docs/encoders.md.
bench-text: build
	bash bench/text_speed.sh

# Optional: the whole project against the newest PyTorch wheel's LibTorch from PyPI (about
# 1.5x faster fine-tuning on CPU here; ~3 GB download, 5.4 GB venv). See docs/encoders.md.
build-pypi-torch: deps
	bash bench/setup_pypi_torch.sh
	cmake -S . -B build-pypi-torch -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCOLDFUSE_TORCH_ROOT="$$(.venv-pypi-torch/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
	cmake --build build-pypi-torch -j$(JOBS)

test-pypi-torch: build-pypi-torch
	ctest --test-dir build-pypi-torch --output-on-failure -j$(JOBS) --timeout 600

clean:
	rm -rf $(BUILD) build-asan build-tsan demo-run demo-text-run experiment-run
