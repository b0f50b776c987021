# Two commands do everything: `make demo` and `make test` (both install first if needed).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS := 1

.PHONY: install demo test clean

install:
	bash scripts/install.sh

demo: install
	$(PY) benchmarks/darcy_mesh.py --quick

test: install
	$(PY) -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
