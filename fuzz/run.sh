#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS_PER_TARGET (default 60) on a temporary
# copy of its seed corpus (fuzz/corpus/<target>/) and of the crashes fixed so far
# (fuzz/regressions/<target>/); the checked-in corpus never grows. Exits non-zero when any
# target crashes, naming the crash artifact (under fuzz/artifacts/<target>/).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]
#
# Environment: PERMD_FUZZ_TOOLCHAIN (default `nightly`, rustup's), PERMD_FUZZ_SANITIZER
# (default `none`; `address` for ASan), PERMD_FUZZ_TARGETS (default: all six).
#
# Build time: fuzz/Cargo.toml builds the dependencies permd links but the targets never reach
# at opt-level 0 (see the comment there), and one `cargo fuzz build` builds all six targets,
# so the shared dependencies compile once.
#
# Sanitizer: `none` by default. permd forbids `unsafe` and the targets reach no C (ring is
# only in TLS and cache checksums); the `unsafe` they do reach is in dependencies, chiefly
# libyaml-rs (a translation of libyaml) under the YAML decoder. ASan would watch that, at a
# cost in build time and exec speed, so it is the choice for long runs
# (`PERMD_FUZZ_SANITIZER=address`), and `none` for CI's short ones. Measured on the 2-core machine (busy with other builds,
# so wall times are high; CPU time is the steadier figure):
#   ASan, dependencies at opt-level 1:  build 19m56s wall, 15.5 min CPU; exec/s snapshot 661,
#                                       delta 552, http_bodies 2160, ndjson 7707
#   none, dependencies at opt-level 0:  build 7m37s wall, 5.6 min CPU; exec/s snapshot 3262,
#                                       delta 1299, http_bodies 4274, ndjson 17815
# Overflow checks stay on (cargo-fuzz's debug assertions): an overflow is a finding.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs="${1:-60}"
toolchain="${PERMD_FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${PERMD_FUZZ_SANITIZER:-none}"
read -r -a targets <<<"${PERMD_FUZZ_TARGETS:-snapshot delta http_bodies ndjson condition image}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

echo "== cargo +$toolchain fuzz build -s $sanitizer (all targets)"
started=$SECONDS
cargo "+$toolchain" fuzz build -s "$sanitizer"
echo "   built in $((SECONDS - started)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    cp corpus/"$t"/* "$work/corpus/$t/"
    if [ -d "regressions/$t" ]; then
        cp regressions/"$t"/* "$work/corpus/$t/" 2>/dev/null || true
    fi
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "dict/$t.dict" ]; then
        args+=(-dict="dict/$t.dict")
    fi
    echo "== $t: ${secs} s"
    started=$SECONDS
    if cargo "+$toolchain" fuzz run -s "$sanitizer" "$t" "$work/corpus/$t" -- "${args[@]}" >"$work/$t.log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")
        cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1 || true)
        echo "   ok: ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, $((SECONDS - started)) s"
    else
        tail -n 60 "$work/$t.log"
        grep -A 2 'panicked at' "$work/$t.log" | head -n 6 || true
        artifact=$(grep -o 'Test unit written to [^ ]*' "$work/$t.log" | tail -1 | sed 's/Test unit written to //' || true)
        echo "   CRASH in $t; artifact: ${artifact:-see the log above (fuzz/artifacts/$t/)}"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}"
    echo "reproduce with: cargo +$toolchain fuzz run -s $sanitizer <target> <artifact>"
    echo "then add the artifact under fuzz/regressions/<target>/ (tests/fuzz_corpus.rs replays it)"
    exit 1
fi
echo "== fuzzing: no crash in ${targets[*]}"
