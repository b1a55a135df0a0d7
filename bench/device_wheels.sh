#!/usr/bin/env bash
# The wheels bench/cuda_check.py needs on the lent GPU machine and that machine lacks.
# It has Python 3.12 with torch, transformers, sentence-transformers, numpy, pillow,
# psutil, safetensors and huggingface-hub (/work/.library/device/KINDS.md); these are
# the rest of stoker's import chain for embed, image, mesh and the embedded broker,
# at the versions this venv runs, as cp312 manylinux wheels in .whl/ (carried there).
#
#   bench/device_wheels.sh [VENV]        # VENV: where to read versions (default .venv)
#
# Then, on the device (the run tool), carrying .whl:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#     --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
#   PYTHONUNBUFFERED=1 python3 bench/cuda_check.py --device cuda:0 --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
names=(amqp annotated-types billiard celery kombu vine click-didyoumean click-repl
       click-plugins diffusers pydantic pydantic-core pydantic-settings python-dotenv
       typing-inspection redis soundfile sqlalchemy greenlet srt webvtt-py trimesh
       tzlocal cffi pycparser)
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
freeze=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-')
pins=()
for name in "${names[@]}"; do
  pin=$(grep -m1 "^$name==" <<<"$freeze" || true)
  pins+=("${pin:-$name}")
done
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
for pin in "${pins[@]}"; do
  # A package published only as an sdist (srt) is pure Python: build its wheel here.
  "$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$pin" 2>/dev/null ||
    "$venv/bin/python" -m pip wheel -q --no-deps -w .whl "$pin" 2>/dev/null ||
    { echo "no wheel for $pin" >&2; exit 1; }
done
du -sh .whl
