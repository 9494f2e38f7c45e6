#!/usr/bin/env bash
# One timed session on a lent GPU machine without network, run from the repository root: the CUDA tests, then
# the full profile's notebooks with their runs trained in parallel (benchmarks/parallel_report.py), all packed
# into $OUT. It stops itself BUDGET seconds after it starts, so the packing always happens.
#   KDCORE_DATA  folder with cifar10-jpg.tar.gz (default .carry)    .whl/  wheels for the report (papermill, ...)
#   KDCORE_COMMIT  the commit this tree was copied from              NOTEBOOKS, JOBS, BUDGET  (see below)
set -u
T0=$(date +%s); BUDGET=${BUDGET:-560}; JOBS=${JOBS:-12}; NOTEBOOKS=${NOTEBOOKS:-01 02 03 04 05 06}
OUT=${OUT:-/tmp/gpu-session}; mkdir -p "$OUT"
left() { echo $((T0 + BUDGET - $(date +%s))); }
exec > >(tee "$OUT/session.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site JUPYTER_PATH=/tmp/site/share/jupyter  # nbconvert's templates live under share/
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export KDCORE_DATA=${KDCORE_DATA:-$PWD/.carry} KDCORE_CACHE=${KDCORE_CACHE:-/tmp/kdcore-cache}
python3 -c "import torch, torchvision, timm, papermill, nbconvert; print('torch', torch.__version__, 'torchvision',
  torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1
python3 -c "from kdcore.report import ensure_kernelspec; ensure_kernelspec()" || exit 1
(timeout 240 python3 -m pytest -q -m cuda tests -p no:cacheprovider >"$OUT/pytest-cuda.log" 2>&1
 echo "pytest -m cuda: exit $?" >>"$OUT/pytest-cuda.log") &
PYTEST=$!
timeout -s INT $(($(left) - 25)) python3 benchmarks/parallel_report.py --profile full --notebooks $NOTEBOOKS \
  --jobs "$JOBS" --deadline $(($(left) - 60)) --logs runs/parallel_report --param threads=2
echo "parallel_report: exit $?, $(($(date +%s) - T0)) s into the session"
wait $PYTEST  # not a bare wait: that also waits for the tee above
tail -3 "$OUT/pytest-cuda.log"
tar czf "$OUT/results-full.tgz" --exclude=_static results/full runs/parallel_report 2>/dev/null
ls -la "$OUT"
