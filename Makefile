# The two commands a newcomer needs (see README.md):
#   make demo   local testbed cluster, the operator, the example policy applied, status shown
#   make test   every test: format, lints, unit tests, integration tests on the testbed
# Everything else here is what those two are made of.
.PHONY: demo test build testbed-up down lint bench install-kubectl-plugin

build:
	testbed/testbed build
	cargo build --all-targets

testbed-up:
	testbed/testbed up

demo:
	testbed/demo

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# The testbed is started once and stopped at the end, pass or fail. It starts
# fresh: a cluster left up by `make demo` still runs the demo's operator, which
# would reconcile the tests' policies too.
test: build
	-testbed/testbed down
	testbed/testbed up
	status=0; \
	  $(MAKE) lint && cargo test --all-targets -- --test-threads=4 || status=$$?; \
	  testbed/testbed down; exit $$status

bench:
	testbed/testbed up
	cargo bench

down:
	testbed/testbed down

# `kubectl tracing why deploy/NAME -n NS`: kubectl runs any `kubectl-*` on PATH as
# a plugin, and the operator binary answers to that name. PLUGIN_DIR must be on PATH.
PLUGIN_DIR ?= $(HOME)/.local/bin
install-kubectl-plugin:
	cargo build --release --bin tracing-operator
	install -d $(PLUGIN_DIR)
	install -m 0755 target/release/tracing-operator $(PLUGIN_DIR)/kubectl-tracing
