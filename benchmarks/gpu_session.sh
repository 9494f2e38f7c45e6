#!/usr/bin/env bash
# One timed run on a GPU machine without network, from the repository root: the CUDA tests, then
# the full profile's notebooks with their runs trained in parallel (benchmarks/parallel_report.py), all packed
# into $OUT. It stops itself BUDGET seconds after it starts, so the packing always happens.
#
# Prepare here, once (the folders are git-ignored):
#   mkdir -p .carry/data .carry/part1 .carry/part2 && cp ../shared/data/cifar10-jpg.tar.gz .carry/data/
#   pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_34_x86_64 \
#     --platform manylinux1_x86_64 -d .whl -r benchmarks/gpu_wheels.txt
# EuroSAT (notebook 07) is 86 MB; where one upload is limited to 64 MiB, send it in two halves (.carry/part1, then
# .carry/part2) before the run. This script joins the parts and checks them against the shared copy's sha256:
#   split -n 2 ../shared/data/eurosat-rgb.tar.gz /tmp/eurosat-rgb.tar.gz.part-
#   mv /tmp/eurosat-rgb.tar.gz.part-aa .carry/part1/ && mv /tmp/eurosat-rgb.tar.gz.part-ab .carry/part2/
# Then, with .carry/data and .whl on the GPU machine:
#   KDCORE_COMMIT=$(git rev-parse --short HEAD) NOTEBOOKS="01 02 03 04 05" bash benchmarks/gpu_session.sh
# Settings: NOTEBOOKS (default 01-05), JOBS (12), BUDGET (560 s), CUDA_TESTS (1), OUT.
set -u
T0=$(date +%s); BUDGET=${BUDGET:-560}; JOBS=${JOBS:-12}; NOTEBOOKS=${NOTEBOOKS:-01 02 03 04 05}
OUT=${OUT:-/tmp/gpu-session}; mkdir -p "$OUT"
EUROSAT_SHA256=76a85ca6262ab24ab3f83f7bc41eea9dd07f96c510d72f742580b548d5ac6b5b  # ../shared/data/README.md
left() { echo $((T0 + BUDGET - $(date +%s))); }
exec > >(tee "$OUT/session.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site JUPYTER_PATH=/tmp/site/share/jupyter  # nbconvert's templates live under share/
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export KDCORE_DATA=${KDCORE_DATA:-$PWD/.carry/data} KDCORE_CACHE=${KDCORE_CACHE:-/tmp/kdcore-cache}
if compgen -G ".carry/part*/eurosat-rgb.tar.gz.part-*" >/dev/null; then
  cat .carry/part*/eurosat-rgb.tar.gz.part-* >"$KDCORE_DATA/eurosat-rgb.tar.gz"
  echo "$EUROSAT_SHA256  $KDCORE_DATA/eurosat-rgb.tar.gz" | sha256sum -c || exit 1
fi
python3 -c "import torch, torchvision, timm, papermill, nbconvert; print('torch', torch.__version__, 'torchvision',
  torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1
python3 -c "from kdcore.runner import ensure_kernelspec; ensure_kernelspec()" || exit 1
if [ "${CUDA_TESTS:-1}" = 1 ]; then
  (timeout 240 python3 -m pytest -q -m cuda tests -p no:cacheprovider >"$OUT/pytest-cuda.log" 2>&1
   echo "pytest -m cuda: exit $?" >>"$OUT/pytest-cuda.log") &
  TESTS=$!
fi
timeout -s INT $(($(left) - 25)) python3 benchmarks/parallel_report.py --profile full --notebooks $NOTEBOOKS \
  --jobs "$JOBS" --deadline $(($(left) - 60)) --logs runs/parallel_report --param threads=2
echo "parallel_report: exit $?, $(($(date +%s) - T0)) s into the session"
if [ "${CUDA_TESTS:-1}" = 1 ]; then
  wait "$TESTS"  # not a bare wait: that also waits for the tee above
  tail -3 "$OUT/pytest-cuda.log"
fi
tar czf "$OUT/results-full.tgz" --exclude=_static results/full runs/parallel_report 2>/dev/null
ls -la "$OUT"
