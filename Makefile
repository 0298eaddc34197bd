# EyeNet developer targets. `make up` and `make test` are the two commands in the README.
PYTHON ?= python3
VENV ?= .venv

.PHONY: up down test bench clean

# Re-installs whenever the dependency list changes.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/eyenet up

down: $(VENV)/.installed
	$(VENV)/bin/eyenet down

# Debian's packages some tests need (prometheus for the alert rules, postgresql's server binaries
# for the PostgreSQL state and audit tests): installed when missing and possible, else those tests skip
test: $(VENV)/.installed
	-@.ci/install-packages
	$(VENV)/bin/python -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/python -m bench.quality

clean:
	rm -rf build dist src/*.egg-info .pytest_cache results
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
