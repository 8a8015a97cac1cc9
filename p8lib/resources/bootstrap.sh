#!/usr/bin/env bash
# EMR bootstrap action: runs on every node (master, core, task) before Spark starts.
# Installs Python 3.11, the pinned dependencies of p8lib (they mirror pyproject.toml; a test
# checks it) and the p8lib wheel. EMR provides Spark itself, so pyspark is not installed.
#
#   bootstrap.sh --wheel s3://BUCKET/p8/p8lib-X-py3-none-any.whl [--weights s3://.../x.h5] [--dry-run]
#
# --dry-run prints every command instead of running it (works anywhere, no AWS needed).
set -euo pipefail

PYTHON=python3.11
PINS=(
  "numpy==1.26.4"
  "pandas==2.2.3"
  "pyarrow==17.0.0"
  "pillow==11.1.0"
  "pillow-heif==1.8.1"
  "matplotlib==3.9.4"
  "tensorflow-cpu==2.18.1"
  "keras==3.8.0"
  "openvino==2026.4.1"
  "boto3==1.35.99"
)

wheel=""
weights=""
dry_run=0

usage() {
  echo "usage: $0 --wheel s3://BUCKET/path/p8lib-*.whl [--weights s3://BUCKET/path/FILE.h5] [--dry-run]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) [ $# -ge 2 ] || usage; wheel="$2"; shift 2 ;;
    --weights) [ $# -ge 2 ] || usage; weights="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) echo "bootstrap.sh: unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$wheel" ] || usage
case "$wheel" in
  s3://*.whl) ;;
  *) echo "bootstrap.sh: --wheel must be an s3:// URI of a .whl file, got: $wheel" >&2; exit 2 ;;
esac

run() {
  if [ "$dry_run" -eq 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

echo "bootstrap.sh: p8lib from $wheel with ${#PINS[@]} pinned packages"
run sudo dnf install -y "$PYTHON" "$PYTHON-pip"
run sudo "$PYTHON" -m pip install --no-cache-dir "${PINS[@]}"
local_wheel="/tmp/$(basename "$wheel")"
run aws s3 cp "$wheel" "$local_wheel"
run sudo "$PYTHON" -m pip install --no-cache-dir --no-deps "$local_wheel"
if [ -n "$weights" ]; then
  # Nodes without internet access still find the MobileNetV2 weights in Keras's cache.
  run mkdir -p "$HOME/.keras/models"
  run aws s3 cp "$weights" "$HOME/.keras/models/"
fi
run "$PYTHON" -c "import p8lib, tensorflow, keras; print('p8lib', p8lib.__version__, 'ready')"
