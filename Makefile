# Two commands, each working on a fresh clone with only Python 3 (>= 3.10) and make:
#   make demo   train a small Flax CNN on the scikit-learn digits with jaxobs watching it,
#               then a doomed run that jaxobs halts (alert, crash dump, failure-signature PNG)
#   make test   lint, type check (mypy), build the docs (strict), then the whole test suite
# Both create (once) a virtual environment in .venv and install the project into it.
# make test-fast: lint, then the tests not marked slow (no docs build): a quick check while working.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: typecheck demo test test-fast lint docs install browser clean

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
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/jaxobs
	for f in jaxobs/*; do ln -s "$$PWD/$$f" .typecheck/jaxobs/; done
	ln -s "$$PWD/bridges" .typecheck/jaxobs/bridges
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p jaxobs

# The browser tests drive Debian's chromium through chromedriver; installed here when missing
# (as root; otherwise those tests are skipped with a note, unless JAXOBS_REQUIRE_BROWSER=1).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: chromium and chromedriver are missing and cannot be installed here; browser tests will be skipped"; fi; \
	fi

test: lint typecheck docs browser
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .typecheck .mypy_cache .pytest_cache .ruff_cache .hypothesis
