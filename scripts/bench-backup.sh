#!/usr/bin/env bash
# Measures `hds backup` of a data dir holding N instances, and the STOW throughput while it
# runs (docs/durability.md, "Backup figures").
#
# Usage: scripts/bench-backup.sh [--instances N] [--pixel-size P] [--concurrency C]
#
# 1. starts `hds up` on a fresh data dir (plain HTTP, a free loopback port);
# 2. STOWs N instances with hds-bench (N/100 studies of 100 instances, P x P 16-bit pixels) and
#    reports that load's throughput (the baseline, no backup running);
# 3. starts a second STOW load (another corpus, three times as large) in the background and,
#    once it stores, runs `hds backup --to DIR`, counting the stored instances when it starts
#    and when it returns: the STOW throughput during the backup is the instances acknowledged
#    in that window divided by its length; then counts the same load over 15 s with no backup
#    running;
# 4. stops the load and hds, and prints the figures.
#
# Counting reads `SELECT count(*) FROM dicom_instances` from index.db (read-only; WAL lets it
# run beside the writer). Environment: HDS_BIN, HDS_BENCH (default: target/release binaries).
set -euo pipefail

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bench-common.sh
source "$repository_root/scripts/bench-common.sh"
hds_bin="${HDS_BIN:-$repository_root/target/release/hds}"
hds_bench="${HDS_BENCH:-$repository_root/target/release/hds-bench}"

instances=10000
pixel_size=128
concurrency=8
while [[ $# -gt 0 ]]; do
    case "$1" in
        --instances) instances="$2"; shift 2 ;;
        --pixel-size) pixel_size="$2"; shift 2 ;;
        --concurrency) concurrency="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 64 ;;
    esac
done
[[ -x "$hds_bin" ]] || { echo "no hds at $hds_bin: cargo build --release -p hds, or set HDS_BIN" >&2; exit 69; }
[[ -x "$hds_bench" ]] || { echo "no hds-bench at $hds_bench: cargo build --release -p hds-bench" >&2; exit 69; }
studies=$(( (instances + 99) / 100 ))

work_dir="$(mktemp -d -t bench-backup.XXXXXX)"
data_dir="$work_dir/data"
hds_pid=""
load_pid=""
cleanup() {
    if [[ -n "$load_pid" ]] && kill -0 "$load_pid" 2>/dev/null; then kill -TERM "$load_pid"; wait "$load_pid" 2>/dev/null || true; fi
    if [[ -n "$hds_pid" ]] && kill -0 "$hds_pid" 2>/dev/null; then kill -TERM "$hds_pid"; wait "$hds_pid" 2>/dev/null || true; fi
    rm -rf "$work_dir"
}
trap cleanup EXIT

count_instances() {
    python3 -c 'import sqlite3, sys
connection = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(connection.execute("SELECT count(*) FROM dicom_instances").fetchone()[0])' "$data_dir/index.db"
}
now() { python3 -c 'import time; print(f"{time.monotonic():.3f}")'; }

port="$(free_port)"
endpoint="http://127.0.0.1:$port"
mkdir -p "$data_dir"
"$hds_bin" up --data-dir "$data_dir" --listen "127.0.0.1:$port" --http > "$work_dir/hds.log" 2>&1 &
hds_pid=$!
token=""
for _ in $(seq 1 600); do
    kill -0 "$hds_pid" 2>/dev/null || break
    if [[ -z "$token" ]]; then
        token="$("$hds_bin" account get-access-token --data-dir "$data_dir" --endpoint "$endpoint" \
            --resource https://dicom.healthcareapis.azure.com 2>/dev/null |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])' 2>/dev/null || true)"
    fi
    if [[ -n "$token" ]] && curl -fs -o /dev/null -H "Authorization: Bearer $token" \
        "$endpoint/dicom/default/dicom/v2/studies?limit=1"; then
        break
    fi
    sleep 0.2
done
[[ -n "$token" ]] || { echo "hds did not start; its log:" >&2; cat "$work_dir/hds.log" >&2; exit 1; }

bench() {
    HDS_BENCH_TOKEN="$token" "$hds_bench" --base-url "$endpoint/dicom/default/dicom/v2" \
        --phases stow --concurrency "$concurrency" --pixel-size "$pixel_size" \
        --instances-per-study 100 --duration 7200 --json "$@"
}

echo "== $("$hds_bin" --version) ($hds_bin), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== storing $instances instances ($pixel_size x $pixel_size, concurrency $concurrency)" >&2
bench --seed 1 --studies "$studies" > "$work_dir/fill.json"
python3 -c 'import json, sys
report = json.load(open(sys.argv[1]))
for phase in report["phases"]:
    items, elapsed, rate, errors = (phase[name] for name in ("items", "elapsed_s", "items_per_s", "errors"))
    print(f"fill: {items} instances in {elapsed:.1f} s, {rate:.1f} instances/s, {errors} errors")' "$work_dir/fill.json" >&2
stored="$(count_instances)"
echo "== $stored instances stored; $(du -sh "$data_dir" | cut -f1) in the data dir" >&2

echo "== second STOW load in the background" >&2
bench --seed 2 --studies $(( 3 * studies )) > "$work_dir/load.json" 2> "$work_dir/load.log" &
load_pid=$!
# Wait until the load stores (its corpus is generated first).
for _ in $(seq 1 3000); do
    [[ "$(count_instances)" -gt $(( stored + 20 )) ]] && break
    kill -0 "$load_pid" 2>/dev/null || { cat "$work_dir/load.log" >&2; exit 1; }
    sleep 0.2
done
backup_start_count="$(count_instances)"; backup_start="$(now)"
HDS_BACKUP_PASSPHRASE="a benchmark passphrase" "$hds_bin" backup --data-dir "$data_dir" \
    --to "$work_dir/backup" 2> "$work_dir/backup.log"
backup_end="$(now)"; backup_end_count="$(count_instances)"
# The same load with no backup running, right after.
window_start_count="$(count_instances)"; window_start="$(now)"
sleep 15
window_end_count="$(count_instances)"; window_end="$(now)"
kill -0 "$load_pid" 2>/dev/null || echo "warning: the STOW load ended before the last count" >&2
grep "backup complete" "$work_dir/backup.log" >&2 || cat "$work_dir/backup.log" >&2
echo "== backup: $(du -sh "$work_dir/backup" | cut -f1)" >&2

python3 - "$window_start" "$window_end" "$window_start_count" "$window_end_count" \
    "$backup_start" "$backup_end" "$backup_start_count" "$backup_end_count" "$stored" <<'EOF'
import sys
ws, we, wsc, wec, bs, be, bsc, bec, stored = (float(value) for value in sys.argv[1:])
print(f"instances in the data dir when the backup started: {int(bsc)} ({int(stored)} before the load)")
print(f"STOW without a backup running: {(wec - wsc) / (we - ws):.1f} instances/s over {we - ws:.1f} s")
print(f"hds backup: {be - bs:.1f} s")
print(f"STOW while the backup ran: {(bec - bsc) / (be - bs):.1f} instances/s ({int(bec - bsc)} instances)")
EOF
