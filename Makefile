# Two commands do all set-up on a fresh machine:
#   make demo   -- creates .venv on first use, then runs the main job on the built-in default
#   make test   -- creates .venv on first use, then runs the test suite
# VENV=path reuses a virtual environment kept elsewhere.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench venv

$(PY):
	python3 -m venv $(VENV)

venv: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'

demo: venv
	$(VENV)/bin/elastic-dit demo --out demo-output

bench: venv
	$(VENV)/bin/elastic-dit bench

# pytest exits 5 when it collected no test; that is not a failure of the suite itself.
test: venv
	$(PY) -m pytest tests -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc
