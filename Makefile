# Two commands do all the set-up: `make demo` (index + query the shipped example data) and `make test`.
# Both create or reuse .venv. On a machine without CUDA the CPU build of torch is installed first so
# that pip never pulls the multi-GB CUDA wheels; GPU users see README "Install" for the two variables.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ETP := $(VENV)/bin/etp-search
TORCH_VERSION ?= 2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a CPU machine without a local torch wheel
TORCH_INDEX ?=
# cpu -> faiss-cpu; gpu -> faiss-gpu (pulls CUDA runtime wheels)
FAISS ?= cpu
STAMP := $(VENV)/.etp-installed-$(FAISS)
DEMO_DIR ?= etp-data/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(FAISS),serve,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(ETP) info etp_search/examples/ptbxl
	$(ETP) prepare etp_search/examples/ptbxl --out $(DEMO_DIR)/signals.h5
	$(ETP) index etp_search/examples/ptbxl --store $(DEMO_DIR)/store.h5
	$(ETP) query --store $(DEMO_DIR)/store.h5 --text "atrial fibrillation" -k 5
	$(ETP) zeroshot --store $(DEMO_DIR)/store.h5 --task superdiagnostic --split all --prompts ensemble

# The whole suite, slow tests included (about 7-8 minutes on 2 cores once set up; test-fast skips the slow ones).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# mypy over etp_search, indexing and training (settings: pyproject.toml [tool.mypy]); fails on any error.
typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_results.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
