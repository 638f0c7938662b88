#!/usr/bin/env bash
# Installs everything stemstream needs on a fresh Debian machine, idempotently:
#   Debian packages (FluidSynth + GM SoundFont, libsndfile, PortAudio, g++ for the compiled
#   decode step, Chromium and its driver for the browser test of `serve`), a virtualenv in .venv,
#   the pinned CPU torch, and the package itself (editable) with the dev/train/live extras.
# Usage: bash scripts/setup.sh            (re-running is cheap: a stamp skips finished steps)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fluidsynth fluid-soundfont-gm libfluidsynth3 libsndfile1 libportaudio2 g++
              chromium chromium-driver)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi

pip_install() {  # quiet unless it fails
  if ! .venv/bin/python -m pip install -q "$@" >.venv/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip.log; echo "[setup] pip install $* failed" >&2; exit 1
  fi
}

stamp=.venv/.stemstream-installed
want=$(cat pyproject.toml constraints.txt requirements-compat.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing torch==2.13.0 (CPU) and stemstream[dev,train,live]"
  pip_install torch==2.13.0
  pip_install -c constraints.txt -e '.[dev,train,live]'
  pip_install --no-deps -r requirements-compat.txt
  .venv/bin/python -c "import torch, stemstream; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
