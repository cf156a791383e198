# The two commands of a fresh checkout; each sets up what is missing first, and only that:
#   make demo   train and evaluate the demo on generated data (configs/demo_synthetic.yaml)
#   make test   lint (black, isort, flake8), the hardware-dependent tests as on a PyTorch without
#               oneDNN (README, "Tests"), then all the tests
# and the browser demo of the demo model (docs/demo.md), trained first if it is missing:
#   make app    serve demo/app.py at http://127.0.0.1:7860 (APP_ARGS="--host 0.0.0.0 ...")
# `make -n demo` / `make -n test` print what would run, set-up steps included.
#
# PYTHON: the interpreter to run and set up. DETECTRON2_SRC: a detectron2 checkout to install,
# or where to clone one (README, "Installation"); e.g. make demo DETECTRON2_SRC=~/src/detectron2

PYTHON ?= python
DETECTRON2_SRC ?= third_party/detectron2
DEMO_OUTPUT ?= output/demo_synthetic
DEMO_WEIGHTS := $(DEMO_OUTPUT)/model_final.pth
APP_ARGS ?=
DETECTRON2_URL := https://github.com/facebookresearch/detectron2.git

# Decided once, as make reads this file: a set-up step is a prerequisite only when its piece
# does not import (dev/probe_env.py prints those that do, and torch==<version> if installed).
# PRESENT="torch detectron2 package mmseg" on the command line skips the probe (the tests do).
ifeq ($(origin PRESENT),undefined)
PRESENT := $(shell $(PYTHON) dev/probe_env.py 2>/dev/null)
endif
INSTALLED_TORCH := $(filter torch==%,$(PRESENT))
step_if_missing = $(if $(filter $(1),$(PRESENT)),,setup-$(1))
TORCH := $(call step_if_missing,torch)
DETECTRON2 := $(call step_if_missing,detectron2)
PACKAGE := $(call step_if_missing,package)
MMSEG := $(call step_if_missing,mmseg)

.PHONY: demo app test lint setup-torch setup-detectron2 setup-package setup-mmseg

demo: $(TORCH) $(DETECTRON2) $(PACKAGE)
	$(PYTHON) train_net.py --config-file configs/demo_synthetic.yaml

app: $(TORCH) $(DETECTRON2) $(PACKAGE) $(DEMO_WEIGHTS)
	$(PYTHON) demo/app.py --config-file configs/demo_synthetic.yaml $(APP_ARGS) \
		--opts MODEL.WEIGHTS $(DEMO_WEIGHTS)

# the model `make demo` trains (the config's OUTPUT_DIR), trained when missing
$(DEMO_WEIGHTS): | $(TORCH) $(DETECTRON2) $(PACKAGE)
	@echo "$(DEMO_WEIGHTS) is missing: training the demo model first (about 3.5 min on 2 cores)"
	$(PYTHON) train_net.py --config-file configs/demo_synthetic.yaml OUTPUT_DIR $(DEMO_OUTPUT)

test: $(TORCH) $(DETECTRON2) $(PACKAGE) $(MMSEG) lint
	POINTREND_SEM_TEST_ONEDNN=0 $(PYTHON) -m pytest tests/test_capabilities.py tests/test_precision.py
	$(PYTHON) -m pytest tests

# third_party/ (where detectron2 is cloned) is not ours to lint; black skips it as git-ignored
lint: $(PACKAGE)
	$(PYTHON) -m black --check --quiet .
	$(PYTHON) -m isort --check-only --quiet --extend-skip third_party .
	$(PYTHON) -m flake8 --extend-exclude third_party

# a matching pair: pip takes the torchvision built for the torch it installs, or for the one
# installed already (kept as it is)
setup-torch:
	$(PYTHON) -m pip install $(or $(INSTALLED_TORCH),torch) torchvision

# on no package index: its official source, built against the installed PyTorch. --use-pep517:
# the pip of a new venv (23.x) would run the legacy `setup.py develop`, which today's setuptools
# hands back to pip *with* build isolation, where torch is missing
setup-detectron2: | $(TORCH)
	$(PYTHON) -m pip install setuptools wheel  # no build isolation: the build uses these
ifeq ($(wildcard $(DETECTRON2_SRC)/setup.py),)
	git clone $(DETECTRON2_URL) $(DETECTRON2_SRC)
endif
	$(PYTHON) -m pip install --no-build-isolation --use-pep517 -e $(abspath $(DETECTRON2_SRC))

setup-package: | $(TORCH) $(DETECTRON2)
	$(PYTHON) -m pip install -e ".[dev]"

# the reference of the parity tests, without mmcv's compiled operators (README, step 4)
setup-mmseg: | $(TORCH)
	$(PYTHON) -m pip install --no-deps mmcv-lite==2.1.0 mmengine==0.10.7 mmsegmentation==1.2.2
	$(PYTHON) -m pip install addict yapf rich prettytable ftfy regex
