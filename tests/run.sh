#!/usr/bin/env bash
# The README's test command: installs or starts what the tests need, then
# runs every test with both inference engines (tract, and onnxruntime through
# the `ort` feature). Works on a machine with only Rust, gcc, git and Python 3:
#
# - mosquitto (the integration tests start their own on free loopback ports):
#   Debian's package, installed with apt-get when missing (root), else the
#   command to run is printed;
# - chromium (the dashboard's browser test, tests/dashboard.rs): Debian's
#   package, the same way;
# - the Python reference packages at the versions the fixtures were made with
#   (tests/fixtures/requirements.txt: scikit-learn, onnxruntime, …), in a
#   virtual environment under target/ (target/pyenv), reinstalled when the
#   requirements change; its python3 comes first on PATH for the tests;
# - libonnxruntime for the `ort` engine: the one the onnxruntime wheel ships
#   (ORT_DYLIB_PATH), so nothing is downloaded at build time.
#
# Arguments go to `cargo test` (e.g. `tests/run.sh --test loop_e2e`).
# `tests/run.sh --setup` only sets up and prints the environment to use.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "tests/run.sh: $*" >&2; }

# --- mosquitto
export PATH="$PATH:/usr/sbin"
if ! command -v mosquitto >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing mosquitto (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --reinstall: a package dpkg lists whose files are gone is put back.
    apt-get install -y -qq --no-install-recommends --reinstall mosquitto >/dev/null
    command -v mosquitto >/dev/null || { say "mosquitto did not install"; exit 1; }
  else
    say "mosquitto is missing; install it with: sudo apt-get install mosquitto"
    exit 1
  fi
fi

# --- chromium (tests/dashboard.rs loads the dashboard in headless Chromium):
#   Debian's package, installed with apt-get when missing (root).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    command -v chromium >/dev/null || { say "chromium did not install"; exit 1; }
  else
    say "chromium is missing; install it with: sudo apt-get install chromium"
    exit 1
  fi
fi

# --- Python reference packages, in target/pyenv
target=${CARGO_TARGET_DIR:-target}
venv="$target/pyenv"
stamp="$venv/requirements.sha256"
want=$(sha256sum tests/fixtures/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python3" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the Python reference packages into $venv (tests/fixtures/requirements.txt)"
  mkdir -p "$target"
  if ! python3 -m venv --clear "$venv" 2>/dev/null; then
    # Debian's python3 without python3-venv: a venv without pip, then pip.
    python3 -m venv --clear --without-pip "$venv"
    python3 -m pip --python "$venv/bin/python3" --version >/dev/null 2>&1 \
      || { say "python3 -m venv is unavailable; install it with: sudo apt-get install python3-venv"; exit 1; }
  fi
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r tests/fixtures/requirements.txt
  echo "$want" > "$stamp"
fi
venv_abs=$(cd "$venv" && pwd)
export PATH="$venv_abs/bin:$PATH"
export VIRTUAL_ENV="$venv_abs"

# --- libonnxruntime of the onnxruntime wheel, for the `ort` engine
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$(python3 -c 'import onnxruntime, os; d = os.path.dirname(onnxruntime.__file__); print(os.path.join(d, "capi", "libonnxruntime.so." + onnxruntime.__version__))')
  export ORT_DYLIB_PATH
fi
[ -f "$ORT_DYLIB_PATH" ] || { say "no libonnxruntime at $ORT_DYLIB_PATH"; exit 1; }

# --- One BLAS kernel and one thread for the reference packages. OpenBLAS
# (numpy's, scipy's) picks its kernels by CPU: SkylakeX on an AVX-512 Intel,
# Haswell on an AMD EPYC with AVX-512 too; their float sums differ in the last
# bits, and so do 1 and 2 threads (lbfgs in scikit-learn). CI reruns the
# fixture scripts and compares their outputs byte for byte, so the scripts run
# with the same kernel (Haswell: AVX2, which every x86-64 CI machine has) and
# one thread on every machine. Outputs made before this pin (SkylakeX, 2
# threads) were regenerated with it on 2026-12-07.
if [ "$(uname -m)" = x86_64 ]; then
  export OPENBLAS_CORETYPE=Haswell
fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

if [ "${1:-}" = "--setup" ]; then
  [ -n "${OPENBLAS_CORETYPE:-}" ] && echo "export OPENBLAS_CORETYPE=\"$OPENBLAS_CORETYPE\""
  echo "export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1"
  echo "export PATH=\"$PATH\""
  echo "export VIRTUAL_ENV=\"$VIRTUAL_ENV\""
  echo "export ORT_DYLIB_PATH=\"$ORT_DYLIB_PATH\""
  exit 0
fi

exec cargo test --locked --features ort "$@"
