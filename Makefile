# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
TARGET ?= 2x
OUT ?= runs/default
# allocation.py's seeds side by side, one worker per core (make bench BENCH_JOBS=2); 1 leaves a core free
BENCH_JOBS ?= 1

.PHONY: install run test bench release clean

install: $(STAMP)

# torch is installed first and pinned, so the package's own torch range is already satisfied and
# pip never reaches for the multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/deploycompress run --target-speedup $(TARGET) --out $(OUT)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	cd benchmarks && ../$(BIN)/python latency_table.py && ../$(BIN)/python threads.py && ../$(BIN)/python targets.py \
		&& ../$(BIN)/python allocation.py --jobs $(BENCH_JOBS)

release: install
	$(BIN)/deploycompress run pipelines/resnet_digits.toml --out runs/release
	$(BIN)/deploycompress check runs/release/report.json --min-speedup 2.0 --max-accuracy-drop 2.0

clean:
	rm -rf $(VENV) runs build *.egg-info
