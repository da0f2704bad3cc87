#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS_PER_TARGET (default 60) on a temporary
# copy of its seed corpus (fuzz/corpus/<target>/) and of the crashes fixed so far
# (fuzz/regressions/<target>/); the checked-in corpus never grows. Exits non-zero when any
# target crashes, naming the crash artifact (under fuzz/artifacts/<target>/).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]
#
# Environment: PERMD_FUZZ_TOOLCHAIN (default `nightly`, rustup's), PERMD_FUZZ_SANITIZER
# (default `address`), PERMD_FUZZ_TARGETS (default: all four).
#
# Build time. `cargo fuzz build` instruments everything permd links (tonic, hyper, reqwest,
# rustls, prometheus, ...), so the build from clean dominates a short run. fuzz/Cargo.toml
# cuts it: no debug info, no LTO, 16 codegen units, opt-level 1 for dependencies and 3 only
# for permd and the decoders the targets exercise. All targets are built by one
# `cargo fuzz build` (the shared dependencies compile once).
#
# Sanitizer. Safe Rust (permd forbids `unsafe`) gains little from AddressSanitizer; what ASan
# does add is coverage of the C inside ring and of `unsafe` in dependencies. Measured on the
# 2-core CI machine, ASan costs about as much build time as `-s none` (the sanitizer is a
# compiler pass, not extra crates) and some exec speed: the numbers are in README.md's Fuzzing
# section. The default stays ASan, as cargo-fuzz's; `PERMD_FUZZ_SANITIZER=none` is there for
# long runs that want speed. Debug assertions (overflow checks) stay on: cargo-fuzz's default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs="${1:-60}"
toolchain="${PERMD_FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${PERMD_FUZZ_SANITIZER:-address}"
read -r -a targets <<<"${PERMD_FUZZ_TARGETS:-snapshot delta http_bodies ndjson}"

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
