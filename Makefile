# Quick start:  make train   (set up, then train the tiny model on the demo corpus)
#               make test    (set up, then run the test suite)
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; set TORCH_SPEC="torch" (or a CUDA wheel index) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup train test clean
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(VENV)/bin/your-ai train

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV)
