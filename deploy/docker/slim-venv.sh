#!/bin/sh
# What an image's virtual environment carries but the server never uses: pip and setuptools (an
# image installs nothing at run time), the wheels' own test suites, and onnxruntime's offline
# tools (graph optimizer, quantizer, converters: `python -m model export` runs them, not the
# server). Run after the environment has been installed and checked.
set -eu
venv=${1:?usage: slim-venv.sh VENV}
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
site=$(echo "$venv"/lib/python3*/site-packages)
find "$site" -depth -type d -name tests -prune -exec rm -rf {} +
rm -rf "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" "$site/onnxruntime/tools"
