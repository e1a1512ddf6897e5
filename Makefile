# unetkit: `make demo` sets up and runs the whole pipeline on synthetic data; `make test` runs the checks.
# The torch pin is for setting up a fresh machine (CPU wheel here, CUDA wheel from PyPI elsewhere); the
# package itself only asks for torch>=2.4. To reuse a system-wide torch: make demo VENV_FLAGS=--system-site-packages

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_PIN ?= torch==2.13.0
# PyPI's Linux torch wheel is the CUDA build (about 2.5 GB with NVIDIA's libraries; it runs on a CPU too).
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only build (about 200 MB) instead.
TORCH_INDEX ?=
BIN := $(VENV)/bin
DEMO ?= demo
export NO_ALBUMENTATIONS_UPDATE := 1

STAGES := core train infer export bench
MODULES := $(sort $(foreach s,$(STAGES),$(wildcard $(s)/*.py $(s)/*/*.py)))

.PHONY: venv test lint typecheck demo clean-demo gpu-check FORCE

venv: $(VENV)/.installed

# The editable install is a link tree (setuptools' strict mode), so IDEs and type checkers resolve unetkit.*;
# it is refreshed whenever a module is added or removed (the list is kept in $(VENV)/.modules).
$(VENV)/.installed: pyproject.toml $(VENV)/.modules
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install -q "$(TORCH_PIN)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev,cpu,train,openvino]" --config-settings editable_mode=strict
	touch $@

$(VENV)/.modules: FORCE
	@mkdir -p $(VENV)
	@echo "$(MODULES)" | cmp -s - $@ || echo "$(MODULES)" > $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the stages as the unetkit package through a tree of folder links (the sources map to
# unetkit.<stage> only when installed).
typecheck: venv
	@mkdir -p build/typecheck/unetkit
	@for s in $(STAGES); do ln -sfn ../../../$$s build/typecheck/unetkit/$$s; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p unetkit
	$(BIN)/mypy tools/gpu_check.py examples/triton_client.py

test: lint typecheck
	$(BIN)/pytest -q

# Carvana-sized synthetic images of 24 cars (2 views each) to train on and 4 other cars held out; a small U-Net at
# scale 0.125 (240x160 model inputs) keeps it quick on a CPU. The split keeps each car's views on one side, and
# the held-out cars are scored at their full size next to the validation score.
demo: venv
	$(BIN)/unet-data synth --out $(DEMO)/data --n 48 --views 2 --size 1918x1280 --seed 0
	$(BIN)/unet-data synth --out $(DEMO)/heldout --n 16 --views 4 --size 1918x1280 --seed 1
	rm -rf $(DEMO)/run $(DEMO)/masks  # the demo starts over: a new run's checkpoint is another model's, and neither
	# unet-train nor unet-infer writes into a folder holding another run's outputs
	$(BIN)/unet-train --data $(DEMO)/data --out $(DEMO)/run --epochs 20 --base-channels 16 --lr 2e-3 \
		--scale 0.125 --batch-size 4 --workers 2 --cache $(DEMO)/cache
	$(BIN)/unet-train --eval $(DEMO)/run/best.pth --data $(DEMO)/heldout --json $(DEMO)/heldout.json --workers 2
	$(BIN)/unet-export $(DEMO)/run/best.pth
	$(BIN)/unet-infer $(DEMO)/heldout/train --checkpoint $(DEMO)/run/best.pth --engine onnx --out $(DEMO)/masks \
		--keep-largest --overlay --rle $(DEMO)/submission.csv
	$(BIN)/unet-data score $(DEMO)/masks --data $(DEMO)/heldout --json $(DEMO)/masks-score.json
	$(BIN)/unet-bench --checkpoint $(DEMO)/run/best.pth --json $(DEMO)/bench.json --markdown $(DEMO)/bench.md \
		--plot $(DEMO)/bench.png
	@$(BIN)/python -c 'import json; v = json.load(open("$(DEMO)/run/best-eval-data-val.json")); \
		h = json.load(open("$(DEMO)/heldout.json")); s = json.load(open("$(DEMO)/masks-score.json")); \
		print("demo done: Dice %.4f on the %d validation cars, %.4f on %d held-out cars never trained or validated" \
		" on (masks at 1918x1280); their masks as unet-infer --keep-largest wrote them: Dice %.4f" \
		% (v["dice"], v["groups"], h["dice"], h["groups"], s["dice"]))'
	@echo "checkpoint and exports in $(DEMO)/run (TensorBoard: $(DEMO)/run/tb, worst images: $(DEMO)/run/*-worst.png),"
	@echo "masks and overlays in $(DEMO)/masks, benchmark report in $(DEMO)/bench.md and $(DEMO)/bench.png"

clean-demo:
	rm -rf $(DEMO)

# Verify a CUDA machine end to end (tests with gpu/trt markers, training, export, unet-infer, unet-bench) into
# one folder of at most 8 files. Uses .venv when there is one, else the python3 that has unetkit installed
# (as on an offline GPU machine, see the README). Exits 2 on a machine without CUDA.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
GPU_CHECK_OUT ?= gpu-check
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
