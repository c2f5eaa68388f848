# Thin wrapper over Meson.  `make demo` and `make test` do all set-up on a
# fresh Debian machine: missing build dependencies are installed first.
BUILD       ?= build
BUILD_CLANG ?= build-clang
BUILD_ASAN  ?= build-asan
BUILD_TSAN  ?= build-tsan
BUILD_FUZZ  ?= build-fuzz
BUILD_INSTALL ?= build-install
PREFIX      ?= /usr/local
MESON_OPTS  ?=
# make stress: the long stress matrix (docs/RELIABILITY.md): STRESS_NSEEDS
# new seeds (derived from the time, printed in the table) x STRESS_MODES x
# STRESS_OPS operations, plus one run of STRESS_LONG_OPS per mode.
STRESS_NSEEDS   ?= 20
STRESS_OPS      ?= 200000
STRESS_LONG_OPS ?= 1000000
STRESS_MODES    ?= thread sigbus nomove copy
STRESS_SEEDS    ?= $(shell s=$$(( $$(date +%s) % 100000 * 100 )); for i in $$(seq 1 $(STRESS_NSEEDS)); do printf '%s ' $$((s + i)); done)
STRESS_ARGS     ?=
# make fuzz: seconds of fuzzing.
FUZZ_TIME   ?= 60

# Sanitizer runs: leaks checked at exit; any report fails the test.
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1:print_summary=1 \
           UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:print_summary=1
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp

.PHONY: all deps build demo test test-quick test-gcc test-asan test-tsan asan tsan clang install \
        clean info bench stress fuzz

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

$(BUILD_ASAN)/build.ninja: | deps
	CC=clang meson setup $(BUILD_ASAN) -Db_sanitize=address,undefined -Db_lundef=false $(MESON_OPTS)

$(BUILD_TSAN)/build.ninja: | deps
	CC=clang meson setup $(BUILD_TSAN) -Db_sanitize=thread -Db_lundef=false $(MESON_OPTS)

asan: deps $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)

tsan: deps $(BUILD_TSAN)/build.ninja
	ninja -C $(BUILD_TSAN)

# The suite three times: gcc, clang ASan+UBSan (with leak check), clang TSan.
test: test-gcc test-asan test-tsan

TEST_ARGS = --print-errorlogs --num-processes 1

test-gcc: build clang
	meson test -C $(BUILD) $(TEST_ARGS)

test-asan: asan
	$(ASAN_ENV) meson test -C $(BUILD_ASAN) $(TEST_ARGS)

test-tsan: tsan
	$(TSAN_ENV) meson test -C $(BUILD_TSAN) $(TEST_ARGS)

# The long stress matrix (docs/RELIABILITY.md), new seeds each time.
stress: build
	tests/stress/matrix.sh ./$(BUILD)/tests/stress/uhmm-stress --seeds "$(STRESS_SEEDS)" \
	    --modes "$(STRESS_MODES)" --ops $(STRESS_OPS) --long-ops $(STRESS_LONG_OPS) --threads 4 \
	    --watchdog 600 $(STRESS_ARGS)

# libFuzzer target, built with clang straight from the library sources.
$(BUILD_FUZZ)/fuzz_api: tests/fuzz/fuzz_api.c $(wildcard src/*.c src/*.h src/devices/*.c include/*.h) | deps
	mkdir -p $(BUILD_FUZZ)/corpus
	clang -g -O1 -std=gnu11 -D_GNU_SOURCE -fvisibility=hidden \
	    -fsanitize=fuzzer,address,undefined -Iinclude \
	    $(wildcard src/*.c src/devices/*.c) tests/fuzz/fuzz_api.c -lpthread -ldl -o $@

fuzz: $(BUILD_FUZZ)/fuzz_api
	cd $(BUILD_FUZZ) && ASAN_OPTIONS=detect_leaks=1 ./fuzz_api -max_total_time=$(FUZZ_TIME) \
	    -handle_bus=0 -print_final_stats=1 corpus $(CURDIR)/tests/fuzz/corpus

# Installing needs only meson, ninja and a C compiler (no test dependency,
# no root beyond writing PREFIX): its own build folder, tests off.
# DESTDIR stages the install (packagers).
install:
	@if [ -f $(BUILD_INSTALL)/build.ninja ]; then \
	    meson configure $(BUILD_INSTALL) -Dprefix=$(PREFIX) -Dtests=false; \
	else \
	    meson setup $(BUILD_INSTALL) --prefix=$(PREFIX) -Dtests=false $(MESON_OPTS); \
	fi
	ninja -C $(BUILD_INSTALL)
	DESTDIR=$(DESTDIR) meson install -C $(BUILD_INSTALL) --quiet

clean:
	rm -rf $(BUILD) $(BUILD_CLANG) $(BUILD_ASAN) $(BUILD_TSAN) $(BUILD_FUZZ) $(BUILD_INSTALL)
