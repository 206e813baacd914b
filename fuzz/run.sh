#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 30), one after the other.
#   fuzz/run.sh [SECONDS] [TARGET...]
# The committed seeds in fuzz/corpus/<target> are read, never written: what the fuzzer finds
# goes to fuzz/target/work-corpus/<target> (kept between runs), crashes to fuzz/artifacts/.
# Prints one `fuzz <target>: <execs> execs in <s> s` line per target; exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spec_json http_request escaping ext_archive websocket_frame jwt notify_env lfc_state rsyslog_endpoint)

for t in "${targets[@]}"; do
    work="fuzz/target/work-corpus/$t"
    mkdir -p "$work"
    log="fuzz/target/$t.log"
    start=$(date +%s)
    # -rss_limit_mb: the targets keep nothing; 1 GiB is far over what they need.
    if ! cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz $t: FAILED (log $log, artifacts in fuzz/artifacts/$t)"
        exit 1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    echo "fuzz $t: ${execs:-?} execs in $(($(date +%s) - start)) s (asked ${secs} s; corpus $(ls "$work" | wc -l) units)"
done
