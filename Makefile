# Two commands matter: `make run` (a local network and a live view of one node)
# and `make test` (lint, types and the whole test suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NODES ?= 25
TESTNET_DIR ?= $(CURDIR)/data/testnet

EVM_STAMP := contracts/node_modules/.installed-stamp

.PHONY: install bytecode run stop test lint typecheck bench system-deps evm-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The contracts' compiler (solc-js), OpenZeppelin and the local chain (anvil, a binary inside
# an npm package), exactly as package-lock.json pins them; reruns only when the lock changes.
$(EVM_STAMP): contracts/package-lock.json contracts/package.json
	@command -v npm >/dev/null || { echo "error: npm is needed (apt-get install nodejs npm)"; exit 1; }
	cd contracts && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(EVM_STAMP)

evm-deps: $(EVM_STAMP)

# Bytecode compiled once, as a pip install of a wheel does (an editable install does not,
# and PYTHONDONTWRITEBYTECODE keeps Python from writing it): the project at optimisation
# levels 0 and 2, the installed packages at level 2, which a testnet's nodes run at
# (cli/testnet.py). Else each node compiles what it imports when it starts.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 -o 0 -o 2 actors protocol cli persistence evm migrations bench
	$(BIN)/python -m compileall -q -j 0 -o 2 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null

install: $(STAMP) $(EVM_STAMP) bytecode

# nft (Debian's nftables) and iproute2 serve the NAT lab; tmux serves the TUI test.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; \
		command -v nft >/dev/null || missing="$$missing nftables"; \
		command -v ip >/dev/null || missing="$$missing iproute2"; \
		command -v tmux >/dev/null || missing="$$missing tmux"; \
		if [ -n "$$missing" ]; then \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
				|| echo "warning: could not install$$missing; the tests that need them will skip"; \
		fi; \
	fi

# A local network of $(NODES) node processes, a file put into it and got back, then the
# live TUI of its first node (q quits the TUI; the network keeps running).
run: install
	$(BIN)/autonomi-actors demo --nodes $(NODES) --dir $(TESTNET_DIR)

stop: install
	$(BIN)/autonomi-actors testnet stop --dir $(TESTNET_DIR)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: install system-deps lint typecheck
	$(BIN)/pytest

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache contracts/node_modules
