# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.effml-installed

.PHONY: demo test bench install clean

install: $(STAMP)

# torch==2.13.0 goes in first, from the local CPU wheel; the pin in pyproject.toml keeps it there.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c "import torch, numpy, scipy, transformers, rich, effml; \
	  assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/effml profile --model effml.zoo:lenet5
	$(BIN)/effml profile --config llama-2-7b --seq 2048 --dtype bf16 --depth 1

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
