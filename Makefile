# Two commands: `make run` and `make test`. Everything else is a step they take.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean dcmtk

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: set up, migrate the embedded SQLite store under ./var, load demo data, serve on :8080
run: $(STAMP)
	PRIMAGE_DEMO_DATA=$${PRIMAGE_DEMO_DATA:-true} $(BIN)/primage serve --host 127.0.0.1 --port 8080

## make test: set up, lint, and run the whole suite (SQLite always; PostgreSQL when PRIMAGE_TEST_POSTGRES_URL is set)
test: $(STAMP) dcmtk
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The PACS importer's tests and bench talk to dcmtk's dcmqrscp (Debian's dcmtk, as root).
dcmtk:
	@command -v dcmqrscp >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends dcmtk >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends dcmtk >/dev/null; }; }

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## make bench: the benchmarks under bench/ (minutes; not part of the tests)
bench: $(STAMP)
	$(BIN)/python bench/fhir_crud.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
