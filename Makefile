# Two commands for a fresh machine: `make run` and `make test`. Every step is idempotent and
# skips itself once done, so both are quick after the first time.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
BPF_DIR := src/otelbpf/bpf
BPF_SRCS := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJS := $(BPF_SRCS:.bpf.c=.bpf.o)
# BPF programs of the tests and benchmarks only (the synthetic ring buffer producer): not shipped.
TEST_BPF_SRCS := $(wildcard tests/bpf/*.bpf.c)
TEST_BPF_OBJS := $(TEST_BPF_SRCS:.bpf.c=.bpf.o)
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# Debian packages: the BPF toolchain for `make run`, the peers and servers for `make test`.
RUN_DEBS := clang llvm libbpf-dev libbpf1 bpftool
TEST_DEBS := bpftrace prometheus chromium iperf3 dnsmasq-base nftables iproute2 gcc linux-perf protobuf-compiler nginx-light wrk curl openssl \
	redis-server postgresql mariadb-server rabbitmq-server nats-server memcached containerd runc busybox-static docker.io
# The container image, built with no Docker engine: debootstrap, then buildah (scripts/build-image).
IMAGE_DEBS := debootstrap buildah
IMAGE := otelbpf:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
STAMP := $(BUILD)/.stamp

.PHONY: run test test-unit test-kernel test-e2e lint bench setup setup-test bpf clean doctor deploy image

run: setup
	$(VENV)/bin/otelbpf run $(ARGS)

test: setup setup-test lint image
	$(VENV)/bin/python -m pytest tests -q $(PYTEST_ARGS)

# The linter and the type checker (configured in pyproject.toml): seconds, cached.
lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test-unit: setup
	$(VENV)/bin/python -m pytest tests/unit -q

doctor: setup
	$(VENV)/bin/otelbpf doctor

bench: setup setup-test
	$(PY) bench/run_all.py

setup: $(STAMP)/debs-run $(STAMP)/venv bpf

setup-test: $(STAMP)/debs-test $(STAMP)/venv-test $(TEST_BPF_OBJS)

$(STAMP)/debs-run:
	@scripts/apt-install $(RUN_DEBS)
	@mkdir -p $(@D) && touch $@

$(STAMP)/debs-test:
	@scripts/apt-install $(TEST_DEBS)
	@mkdir -p $(@D) && touch $@

$(STAMP)/venv: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	@mkdir -p $(@D) && touch $@

$(STAMP)/venv-test: pyproject.toml $(STAMP)/venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# Plain manifests for `kubectl apply`, rendered from the Helm chart (a test checks they are fresh).
deploy: setup-test
	$(PY) deploy/render.py > deploy/otelbpf.yaml.tmp && mv deploy/otelbpf.yaml.tmp deploy/otelbpf.yaml

# build/image/otelbpf-image.tar (OCI archive) from the Containerfile: about 4 minutes the first
# time, seconds to a minute after (layers are cached); tests/image runs it under containerd.
image:
	@scripts/apt-install $(IMAGE_DEBS)
	scripts/build-image $(IMAGE)

BARRIERS := src/otelbpf/kernel/_barriers.so

BPF_MANIFEST := $(BPF_DIR)/bpf-objects.sha256

bpf: $(BPF_OBJS) $(BPF_MANIFEST) $(BARRIERS)

# SHA-256 of every shipped object (sha256sum's format): checked before each load (kernel/integrity.py).
$(BPF_MANIFEST): $(BPF_OBJS)
	cd $(BPF_DIR) && sha256sum $(notdir $(BPF_OBJS)) > $(@F).tmp && mv $(@F).tmp $(@F)

# Acquire/release barriers for the ring buffer reader (kernel/barriers.c): Python has none.
$(BARRIERS): src/otelbpf/kernel/barriers.c
	clang -O2 -Wall -shared -fPIC -o $@.tmp $< && mv $@.tmp $@

$(BUILD)/vmlinux.h:
	@mkdir -p $(@D)
	@test -r /sys/kernel/btf/vmlinux || { echo "error: /sys/kernel/btf/vmlinux is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is needed)" >&2; exit 1; }
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

BPF_CC = clang -target bpf -D__TARGET_ARCH_$(ARCH) -O2 -g -Wall -I$(BUILD) -I$(BPF_DIR) -c $< -o $@.tmp \
	&& llvm-strip -g $@.tmp && mv $@.tmp $@  # keep .BTF (CO-RE needs it), drop DWARF

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(BPF_DIR)/events.h $(BUILD)/vmlinux.h
	$(BPF_CC)

tests/bpf/%.bpf.o: tests/bpf/%.bpf.c $(BUILD)/vmlinux.h
	$(BPF_CC)

clean:
	scripts/build-image --clean
	rm -rf $(BUILD) $(BPF_DIR)/*.bpf.o $(BPF_MANIFEST) $(TEST_BPF_OBJS) $(BARRIERS)
