# Two commands, each working on a fresh clone with only Python 3 (>= 3.10) and make:
#   make demo   train a small Flax CNN on the scikit-learn digits with jaxobs watching it,
#               then a doomed run that jaxobs halts (alert, crash dump, failure-signature PNG)
#   make test   lint, build the docs (strict), then the whole test suite
# Both create (once) a virtual environment in .venv and install the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint docs install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/01_digits_cnn.py --dir runs --show
	@echo
	@echo "== a doomed run: the learning rate runs away and jaxobs halts it =="
	$(BIN)/python examples/03_doomed_run.py --dir runs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
