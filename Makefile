# marsseg: train -> export -> edge. Every target sets up what it needs first.
PY        ?= python3
VENV      ?= .venv
EDGE_VENV ?= .venv-edge
JAX_VENV  ?= .venv-jax
DATA      ?= ../shared/data/ai4mars-frames-128.npz
RUNS      ?= runs
CONFIG    ?= train/configs/default.json
EPOCH_SCALE ?= 1
MODEL     ?=
OUT       ?= out

BIN      := $(VENV)/bin
EDGE_BIN := $(EDGE_VENV)/bin
export MARSSEG_DATA ?= $(DATA)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-edge test lint train export calibration demo eval bench soak board-check check-jax clean

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[train,test]"
	touch $@

$(EDGE_VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(EDGE_VENV)
	$(EDGE_BIN)/pip install -q --upgrade pip
	$(EDGE_BIN)/pip install -q -e .
	touch $@

setup: $(VENV)/.stamp           ## full dev environment: edge runtime + TensorFlow + test tools
setup-edge: $(EDGE_VENV)/.stamp ## the light runtime alone, as on a board

test: setup                     ## the whole suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

train: setup                    ## every phase of the recipe ($(CONFIG)) on $(DATA); EPOCH_SCALE=0.1 on a CPU
	$(BIN)/marsseg-train --config $(CONFIG) --data $(DATA) --out-dir $(RUNS) --epoch-scale $(EPOCH_SCALE)

check-jax:                      ## one short epoch of every committed config on Keras' JAX backend (no TensorFlow)
	$(PY) -m venv $(JAX_VENV)
	$(JAX_VENV)/bin/pip install -q -e ".[jax]"
	for cfg in train/configs/*.json; do \
	  KERAS_BACKEND=jax $(JAX_VENV)/bin/marsseg-train --config $$cfg --data $(DATA) --out-dir $(OUT)/jax \
	    --run-name jax-$$(basename $$cfg .json) --limit-frames 64 --set 'phases=[]' --set optim.epochs=1 \
	    --batch-size 8 || exit 1; \
	done

calibration: setup              ## regenerate calibration_data/ from the training frames
	$(BIN)/marsseg-export calibrate --data $(DATA) --out calibration_data/calibration_tiles.npz

export: setup                   ## int8 TFLite + metadata + accuracy report from the latest run (or MODEL=...)
	$(BIN)/marsseg-export $(if $(MODEL),--model $(MODEL),--runs $(RUNS))

demo: setup-edge                ## the bundled model on the bundled clip of real validation frames
	$(EDGE_BIN)/marsseg-edge --source demo --output $(OUT)/demo --summary

eval: setup                     ## frame-level evaluation of the bundled int8 model
	$(BIN)/marsseg-eval --split-of edge/assets --data $(DATA) --output $(OUT)/eval

bench: setup                    ## benchmarks -> bench/results/<host>-<date>.json
	$(BIN)/python -m tools.bench --output bench/results
	$(BIN)/python -m tools.conv_bench --output bench/results
	$(BIN)/python -m tools.train_bench --output bench/results
	$(BIN)/python -m tools.side_by_side --output bench/results

soak: setup                     ## 20,000-frame soak (RSS growth) + 10^6-input decoder fuzz -> bench/results
	$(BIN)/python -m tools.soak --output bench/results

board-check: setup              ## aarch64 (Pi 4) check under qemu: edge suite + int8 agreement with x86 (root)
	bash tools/board_check.sh

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
