#!/usr/bin/env bash
# Wheels for installing unetkit on a machine without network access that already has PyTorch (with CUDA),
# torchvision, numpy, Pillow, OpenCV, onnx, ONNX Runtime, tqdm and TensorBoard, as GPU images usually do.
# Run it on a machine with network access, from the repository's root:
#   bash tools/offline_wheels.sh [PYTHON_VERSION] [EXTRA_PACKAGE ...]    # default: this python3's version
# It fills .whl/ (ignored by git); copy the checkout with .whl/ to the offline machine and see the README
# ("Verifying a GPU machine") for the two install commands.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
pyver=${1:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
shift || true
mkdir -p .whl
# albumentations imports scipy; pydantic needs the exact pydantic-core it names; matplotlib draws unet-bench's plot;
# setuptools>=68 builds the editable install without build isolation (Python 3.12 venvs have none).
# For CPython 3.12 on x86_64 this is about 61 MB (scipy 35 MB of it), measured 2026-12-03.
pkgs=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
      typing-extensions stringzilla simsimd onnxscript onnx-ir ml-dtypes scipy matplotlib contourpy cycler fonttools
      kiwisolver pyparsing python-dateutil six "setuptools>=68" "$@")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${pkgs[@]}"
ls -1 .whl
