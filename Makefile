# deltallm — build, test and run.
#
#   make run        build everything and start the daemon (or the CLI) on the default model
#   make test       build and run every test suite
#   make test-asan  the same under AddressSanitizer + UBSan
#   make bench      benchmarks (generates synthetic models into build/models)
#
# Sources are found by wildcard so that a new module only needs its .c file:
#   engine/*.c        -> libdeltallm.a (no HTTP); files named *_avx2.c / *_avx512.c get
#                        those instruction sets, and are only *called* after run-time dispatch
#   engine/cli/*.c    -> deltallm (the CLI)
#   daemon/*.c        -> deltallmd (main.c) + libdeltallmd.a (the rest, for unit tests)
#   tests/test_*.c    -> one Check suite binary each

BUILD   ?= build
CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
SHARED  ?= ../shared
OPT     ?= -O2
DEPS_PKGS := libmicrohttpd-dev libcjson-dev libuv1-dev check pkg-config libcurl4-openssl-dev
# only `make test` needs these: promtool/prometheus for the metrics tests, node for the
# openai client and openapi checks (npm packages go to $(BUILD)/node_modules at test time)
TEST_PKGS := prometheus nginx

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS  ?=
override CFLAGS += -std=c11 $(OPT) -g $(WARN) -D_GNU_SOURCE -iquote engine -iquote daemon -iquote engine/cli -pthread $(SANITIZE)
LDFLAGS ?=
override LDFLAGS += -pthread $(SANITIZE)

PKGS_DAEMON := libmicrohttpd libcjson libuv
PKG_CFLAGS   = $(shell pkg-config --cflags $(PKGS_DAEMON) check libcurl 2>/dev/null)
LIBS_DAEMON  = $(shell pkg-config --libs $(PKGS_DAEMON) 2>/dev/null)
LIBS_TEST    = $(shell pkg-config --libs check libcurl 2>/dev/null)

ENGINE_SRC := $(wildcard engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
CLI_SRC    := $(wildcard engine/cli/*.c)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_COMMON_SRC := $(filter-out tests/test_%,$(wildcard tests/*.c))
TEST_COMMON_OBJ := $(TEST_COMMON_SRC:%.c=$(BUILD)/%.o)

LIB        := $(BUILD)/libdeltallm.a
DLIB       := $(BUILD)/libdeltallmd.a
CLI        := $(BUILD)/deltallm
DAEMON     := $(BUILD)/deltallmd
HAVE_DAEMON := $(wildcard daemon/main.c)

.PHONY: all deps test test-asan bench run install clean check-format
all: $(BUILD)/.deps $(LIB) $(CLI) $(if $(HAVE_DAEMON),$(DAEMON)) $(TEST_BIN)

# Install the Debian packages we need when they are missing (as root), or say how.
define install_pkgs
	@mkdir -p $(BUILD)
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$(2)" ] && ! command -v node >/dev/null 2>&1; then missing="$$missing nodejs npm"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing || exit 1; \
	  else echo "missing Debian packages; run: sudo apt-get install -y$$missing"; exit 1; fi; fi
	@touch $@
endef
$(BUILD)/.deps:
	$(call install_pkgs,$(DEPS_PKGS),)
$(BUILD)/.testdeps:
	$(call install_pkgs,$(TEST_PKGS),node)
deps: $(BUILD)/.deps

$(BUILD)/%.o: %.c | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

# Instruction-set specific kernels: compiled for the ISA, called only after cpu dispatch
# (POPCNT: every AVX2 CPU has it; without the flag __builtin_popcount is a libgcc call).
$(BUILD)/engine/%_avx2.o:   override CFLAGS += -mavx2 -mfma -mf16c -mpopcnt
$(BUILD)/engine/%_avx512.o: override CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -mpopcnt

$(LIB): $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(DLIB): $(DAEMON_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CLI): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ -lm
$(DAEMON): $(BUILD)/daemon/main.o $(DLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS_DAEMON) -lm
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_COMMON_OBJ) $(DLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS_TEST) $(LIBS_DAEMON) -lm

# Every suite runs from the repository root; shared models are read from $(SHARED).
test: all $(BUILD)/.testdeps
	@DL_SHARED=$(SHARED) DL_BUILD=$(BUILD) sh tests/run.sh $(TEST_BIN)

test-asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

bench: all
	@DL_SHARED=$(SHARED) sh tests/bench.sh $(BUILD)

run: all
	@sh tests/run-default.sh $(BUILD) $(SHARED)

# Binaries and man pages under $(PREFIX); the unit under $(PREFIX)/lib/systemd/system with
# ExecStart pointing at $(PREFIX)/bin; the example configuration (model= pointing into the
# unit's StateDirectory) as /etc/deltallm/deltallmd.conf.example, never over a real one; its
# stories260K layer profile commented out (with the target that holds without one), since the
# model there is the user's.
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/lib/systemd/system \
	  $(DESTDIR)/etc/deltallm
	install -m 755 $(CLI) $(DESTDIR)$(PREFIX)/bin/deltallm
	$(if $(HAVE_DAEMON),install -m 755 $(DAEMON) $(DESTDIR)$(PREFIX)/bin/deltallmd)
	install -m 644 man/deltallm.1 $(DESTDIR)$(PREFIX)/share/man/man1/deltallm.1
	install -m 644 man/deltallmd.8 $(DESTDIR)$(PREFIX)/share/man/man8/deltallmd.8
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|' systemd/deltallmd.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/deltallmd.service
	chmod 644 $(DESTDIR)$(PREFIX)/lib/systemd/system/deltallmd.service
	sed -e 's|^model = .*|model = /var/lib/deltallm/models/model.gguf|' \
	  -e 's|^delta-layer-offsets|# delta-layer-offsets|' \
	  -e 's|^delta-sparsity-target = 0.66 |delta-sparsity-target = 0.62 |' config/deltallmd.conf \
	  > $(DESTDIR)/etc/deltallm/deltallmd.conf.example
	chmod 644 $(DESTDIR)/etc/deltallm/deltallmd.conf.example

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
