#!/usr/bin/env bash
# The GPU run (docs/gpu.md), on a machine lent through the device tool, from the repository root:
# ONNX Runtime's CUDA build, pydantic and modelship's own wheel from .gpu/ (made here by
# `make gpu-bundle`), then `gpu.py run` on the prepared cases. Writes gpu.json, gpu.md and
# log.txt to $OUT.
set -euo pipefail
out=${OUT:-/tmp/gpu-out}
site=/tmp/gpu-site
mkdir -p "$site" "$out"
archive=.gpu/onnxruntime-gpu.tar.xz
if [ ! -f "$archive" ]; then  # carried in parts over several calls (gpu_bundle.py --chunks)
  cat .gpu/onnxruntime-gpu.tar.xz.part* > /tmp/onnxruntime-gpu.tar.xz
  archive=/tmp/onnxruntime-gpu.tar.xz
fi
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$archive" "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
nvidia-smi -L || true
# CUDA 13 and cuDNN as PyTorch's nvidia-* wheels installed them, for the CUDA provider to open
nvidia_libs=$(python3 -c "import glob, site; print(':'.join(sorted({d for p in site.getsitepackages() for d in glob.glob(p + '/nvidia/**/lib', recursive=True)})))")
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
PYTHONPATH="$site" PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py run .gpu/cases --out "$out" 2>&1 | tee "$out/log.txt"
