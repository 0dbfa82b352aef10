#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or the ones named) for SECONDS seconds each and
# prints, per target: executions, coverage (libFuzzer's cov/ft counters), corpus size
# and crashes (files in fuzz/artifacts/TARGET). Exits 1 if any target crashed.
#
#   scripts/fuzz.sh 60                 # every target, one minute each
#   scripts/fuzz.sh 300 btf elf        # two targets, five minutes each
#
# Needs `cargo install cargo-fuzz` and a C++ compiler (libFuzzer). The toolchain is
# stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags. Seeds: fuzz/seeds/TARGET
# (small hand-made inputs) and the repository's fixtures; corpora grow in fuzz/corpus/TARGET.
# Per input: 10 s (-timeout) and 2 GiB (-rss_limit_mb), the issue-14 budget.
set -euo pipefail
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

seed() { # seed TARGET FILE...
    local t=$1; shift
    mkdir -p "corpus/$t"
    for f in "$@"; do [ -f "$f" ] && cp -n "$f" "corpus/$t/" 2>/dev/null || true; done
}
for d in seeds/*/; do t=$(basename "$d"); seed "$t" "$d"*; done
fx=$root/crates/vmi-profile/tests/fixtures
seed pdb "$fx"/generated-demo/*.pdb "$fx"/pe-pdb/*.pdb
seed pe "$fx"/generated-demo/*.exe "$fx"/pe-pdb/*.exe
mkdir -p corpus/vmcoreinfo
printf 'OSRELEASE=6.1.0-13-amd64\nBUILD-ID=3b43fad5034874490492400000000000000000aa\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffff9f01b4a0\nOFFSET(uts_namespace.name)=0\nNUMBER(phys_base)=-2013265920\nKERNELOFFSET=1c800000\n' > corpus/vmcoreinfo/seed.txt

cargo fuzz build --sanitizer "$sanitizer" -O >build.log 2>&1 || { tail -20 build.log >&2; exit 2; }
printf '%-14s %12s %8s %8s %8s %8s\n' target executions exec/s cov ft crashes
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" logs
    log=logs/$t.log
    cargo fuzz run --sanitizer "$sanitizer" -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    [ "$crashes" -gt 0 ] && failed=1
    printf '%-14s %12s %8s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
done
exit $failed
