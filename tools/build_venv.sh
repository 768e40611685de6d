#!/bin/sh
# Builds the runtime virtual environment of the container image:
#   sh tools/build_venv.sh VENV_DIR
# run from a directory holding constraints.txt and the project. The Dockerfile's
# builder stage runs it and tests/acceptance/test_entrypoint.py runs it too, so
# the image and its test install exactly the same thing.
set -eu

venv=${1:?usage: build_venv.sh VENV_DIR}

python3 -m venv "$venv"
# A plain (not editable) install: the image must not need the source tree.
"$venv/bin/python" -m pip install --no-input --disable-pip-version-check \
    --constraint constraints.txt .
"$venv/bin/processflow" --version
