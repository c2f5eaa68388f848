# Thin wrapper over Meson.  `make demo` and `make test` do all set-up on a
# fresh Debian machine: missing build dependencies are installed first.
BUILD       ?= build
BUILD_CLANG ?= build-clang
MESON_OPTS  ?=

.PHONY: all deps build demo test test-quick clang install clean info bench

all: build

deps:
	@sh tools/install-deps.sh

$(BUILD)/build.ninja: | deps
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD_CLANG)/build.ninja: | deps
	CC=clang meson setup $(BUILD_CLANG) -Dwerror=true $(MESON_OPTS)

# Warning-free under clang too (gcc is checked by the main build in CI).
clang: deps $(BUILD_CLANG)/build.ninja
	ninja -C $(BUILD_CLANG)

demo: build
	./$(BUILD)/tools/uhmm demo

info: build
	./$(BUILD)/tools/uhmm info

# Benchmarks with their baselines taken in the same run (docs/PERFORMANCE.md).
bench: build
	./$(BUILD)/tools/uhmm bench $(BENCH_ARGS)

test: build clang
	meson test -C $(BUILD) --print-errorlogs --num-processes 1

install: build
	meson install -C $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD_CLANG)
