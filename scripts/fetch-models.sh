#!/usr/bin/env bash
# Fetch the model files that hearken loads at run time (ONNX Runtime, Silero VAD,
# Moonshine, SmolLM2, the Piper voice, Smart Turn) from PyPI wheels, as listed in
# models/MANIFEST.
#
#   scripts/fetch-models.sh DEST_DIR
#
# Each manifest line is
#   <pypi-package>==<version> <path-inside-wheel> <dest-file-name> <sha256>
# Each wheel is downloaded at most once (into $HEARKEN_WHEEL_CACHE, default
# DEST_DIR/.wheels), the one file is extracted with python's zipfile, and its
# SHA-256 is checked. Files already in DEST_DIR with the right hash are skipped,
# so running the script again is cheap and changes nothing.
#
# Environment:
#   HEARKEN_MODELS_MANIFEST  manifest to read (default: models/MANIFEST beside scripts/)
#   HEARKEN_WHEEL_CACHE      where wheels are kept (default: DEST_DIR/.wheels)
#   PYTHON                   python interpreter (default: python3)
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST_DIR" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${HEARKEN_MODELS_MANIFEST:-$here/../models/MANIFEST}"
dest="$1"
cache="${HEARKEN_WHEEL_CACHE:-$dest/.wheels}"
python="${PYTHON:-python3}"

[[ -f "$manifest" ]] || { echo "error: manifest not found: $manifest" >&2; exit 1; }
mkdir -p "$dest" "$cache"

# sha256 FILE -> prints the hex digest (python, so no coreutils assumption).
sha256() {
    "$python" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
PY
}

# find_wheel PACKAGE VERSION -> prints the cached wheel's path, if any.
find_wheel() {
    local norm
    # Wheel file names use the normalised project name: lower case, '-'/'.' -> '_'.
    norm="$(tr 'A-Z.-' 'a-z__' <<<"$1")"
    compgen -G "$cache/${norm}-${2}-*.whl" | head -n 1 || true
}

# download_wheel PACKAGE VERSION: one pip download into the cache.
download_wheel() {
    local pkg="$1" ver="$2"
    local -a extra=()
    case "$pkg" in
        # Native wheels: pin one CPython/manylinux tag so any local python (or
        # none of that version) gets the same file, and hence the same hash.
        onnxruntime)
            extra=(--python-version 3.11 --implementation cp --abi cp311
                   --platform manylinux_2_28_x86_64) ;;
        # Pure-python wheel whose metadata asks for Python >= 3.11: state the
        # version so an older local python still gets the (one, universal) wheel.
        pipecat-ai)
            extra=(--python-version 3.11) ;;
    esac
    echo "download $pkg==$ver" >&2
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        "${extra[@]}" -d "$cache" "$pkg==$ver" >&2
}

# extract WHEEL INNER_PATH OUT_FILE
extract() {
    "$python" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, inner, out = sys.argv[1:]
try:
    with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except KeyError:
    sys.exit(f"error: {inner} is not inside {wheel}")
except zipfile.BadZipFile:
    sys.exit(f"error: {wheel} is not a valid wheel; delete it and run again")
PY
}

failed=0
line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    line="${line%%#*}"
    [[ -z "${line//[[:space:]]/}" ]] && continue
    read -r spec inner name want rest <<<"$line"
    if [[ -z "${want:-}" || -n "${rest:-}" || "$spec" != *==* || ! "$want" =~ ^[0-9a-f]{64}$ ]]; then
        echo "error: $manifest:$line_no: expected '<pkg>==<ver> <path-in-wheel> <dest> <sha256>'" >&2
        exit 1
    fi
    pkg="${spec%%==*}"
    ver="${spec#*==}"
    out="$dest/$name"

    if [[ -f "$out" ]]; then
        if [[ "$(sha256 "$out")" == "$want" ]]; then
            echo "ok       $name"
            continue
        fi
        echo "stale    $name (hash differs; fetching again)" >&2
    fi

    wheel="$(find_wheel "$pkg" "$ver")"
    if [[ -z "$wheel" ]]; then
        download_wheel "$pkg" "$ver"
        wheel="$(find_wheel "$pkg" "$ver")"
        [[ -n "$wheel" ]] || { echo "error: pip gave no wheel for $pkg==$ver in $cache" >&2; exit 1; }
    fi

    mkdir -p "$(dirname "$out")"
    tmp="$out.part.$$"
    extract "$wheel" "$inner" "$tmp"
    got="$(sha256 "$tmp")"
    if [[ "$got" != "$want" ]]; then
        rm -f "$tmp"
        echo "error: SHA-256 mismatch for $name (from $pkg==$ver:$inner)" >&2
        echo "       expected $want" >&2
        echo "       got      $got" >&2
        failed=1
        continue
    fi
    mv -f "$tmp" "$out"
    echo "fetched  $name"
done <"$manifest"

if [[ $failed -ne 0 ]]; then
    echo "error: some model files failed verification (see above)" >&2
    exit 1
fi
