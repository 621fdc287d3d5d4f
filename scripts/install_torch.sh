#!/usr/bin/env bash
# Sourced by scripts/setup.sh: defines install_torch (tests/test_install.py runs it with stand-ins for pip,
# nvidia-smi and uname).
# torch first, so that pip does not choose a build for us: on Linux a plain `pip install torch` is the CUDA build
# (several GB). With an NVIDIA GPU (nvidia-smi lists one) that is what we want; without one, the CPU build
# (`+cpu`) from PyTorch's CPU wheel index (or a local copy of it), and if that cannot be had, the plain install.
TORCH=${TORCH_VERSION:-2.13.0}
install_torch() {
  if [ "$(uname -s)" != Linux ]; then
    echo "== torch $TORCH: $(uname -s) has no CUDA build on PyPI; the plain install is the right one"
    python -m pip install -q "torch==$TORCH"
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "== torch $TORCH: an NVIDIA GPU is present, so the default (CUDA) build"
    python -m pip install -q "torch==$TORCH"
  elif python -m pip install -q --retries 0 --timeout 30 --extra-index-url https://download.pytorch.org/whl/cpu "torch==$TORCH+cpu"; then
    echo "== torch $TORCH+cpu: no NVIDIA GPU, so the CPU build (from PyTorch's CPU wheel index, or a local copy of it)"
  else
    echo "== torch $TORCH: PyTorch's CPU wheel index could not be reached, so the plain install (on Linux the CUDA build, several GB)"
    python -m pip install -q "torch==$TORCH"
  fi
}
