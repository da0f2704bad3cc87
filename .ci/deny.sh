#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, banned crates, sources (offline),
# then RustSec advisories when the advisory database can be fetched (it lives on GitHub, which
# the CI machines cannot reach; there the step says so and is skipped, never silently passed).
# Not part of .ci/run: installing cargo-deny takes ~6 minutes on the 2-core machines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
cargo deny --offline check licenses bans sources
if cargo deny fetch db >/dev/null 2>&1 && [ -n "$(ls -A "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" 2>/dev/null)" ]; then
    cargo deny check advisories
else
    echo "advisories: SKIPPED, the RustSec database could not be fetched (no network to GitHub)"
fi
