#!/usr/bin/env bash
# Set up (packages, models) and run the server with the shipped defaults.
#   scripts/run.sh [--config FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo run --release --bin hearken -- serve "$@"
