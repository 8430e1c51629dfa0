#!/usr/bin/env bash
# Set up (packages, models) and run the whole test suite: unit tests, integration
# tests over real WebSockets, and the lint gates.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
