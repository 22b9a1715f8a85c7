#!/usr/bin/env bash
# Measures Orthanc + its DICOMweb plugin with hds-bench, as the baseline hds is
# compared against (docs/benchmarks.md, "DICOMweb load").
#
# Usage: scripts/bench-orthanc.sh [--runs N] [--out DIR] [-- HDS-BENCH-ARGUMENTS...]
#
# Each run starts a fresh Orthanc (empty storage in a temporary directory, HTTP
# on a free loopback port, DICOM port off, no authentication), runs hds-bench
# against http://127.0.0.1:PORT/dicom-web, and stops it. With --runs > 1 the
# median of every figure over the runs is printed at the end.
#
# Orthanc 1.10 has no HTTP bind-address setting (it listens on all
# interfaces and only refuses remote clients). So when `unshare -n` works
# (root), the whole script re-runs itself in a private network namespace whose
# only interface is loopback; otherwise it falls back to RemoteAccessAllowed=false.
#
# Environment: HDS_BENCH (the hds-bench binary; default target/release/hds-bench),
# ORTHANC (default: Orthanc on PATH), ORTHANC_DICOMWEB_PLUGIN (the plugin .so).
# Requires: apt-get install -y orthanc orthanc-dicomweb; cargo build --release -p hds-bench.
set -euo pipefail

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bench-common.sh
source "$repository_root/scripts/bench-common.sh"
hds_bench="${HDS_BENCH:-$repository_root/target/release/hds-bench}"
orthanc="${ORTHANC:-$(command -v Orthanc || true)}"
plugin="${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}"

runs=1
out_dir=""
bench_arguments=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        --) shift; bench_arguments=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (hds-bench options go after --)" >&2; exit 64 ;;
    esac
done

[[ -x "$hds_bench" ]] || { echo "no hds-bench at $hds_bench: cargo build --release -p hds-bench" >&2; exit 69; }
[[ -n "$orthanc" && -x "$orthanc" ]] || { echo "Orthanc not found: apt-get install -y orthanc orthanc-dicomweb" >&2; exit 69; }
[[ -f "$plugin" ]] || { echo "DICOMweb plugin not found at $plugin" >&2; exit 69; }

if [[ -z "${HDS_BENCH_NETNS:-}" ]] && unshare -n true 2>/dev/null; then
    export HDS_BENCH_NETNS=1
    exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$0" \
        --runs "$runs" ${out_dir:+--out "$out_dir"} -- "${bench_arguments[@]}"
fi

work_dir="$(mktemp -d -t bench-orthanc.XXXXXX)"
[[ -n "$out_dir" ]] || out_dir="$work_dir/results"
mkdir -p "$out_dir"
orthanc_pid=""

stop_orthanc() {
    if [[ -n "$orthanc_pid" ]] && kill -0 "$orthanc_pid" 2>/dev/null; then
        kill "$orthanc_pid"
        wait "$orthanc_pid" 2>/dev/null || true
    fi
    orthanc_pid=""
}
cleanup() {
    stop_orthanc
    discard_run_dirs_under "$work_dir"
}
trap cleanup EXIT

start_orthanc() {
    local run_dir="$1" port="$2"
    mkdir -p "$run_dir/storage"
    cat > "$run_dir/orthanc.json" <<EOF
{
  "Name": "hds-bench-baseline",
  "StorageDirectory": "$run_dir/storage",
  "IndexDirectory": "$run_dir/storage",
  "HttpPort": $port,
  "DicomServerEnabled": false,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "SaveJobs": false,
  "Plugins": ["$plugin"],
  "DicomWeb": {
    "Enable": true,
    "Root": "/dicom-web/",
    "EnableWado": false
  }
}
EOF
    "$orthanc" "$run_dir/orthanc.json" > "$run_dir/orthanc.log" 2>&1 &
    orthanc_pid=$!
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:$port/dicom-web/studies?limit=1"; then
            return 0
        fi
        kill -0 "$orthanc_pid" 2>/dev/null || break
        sleep 0.2
    done
    echo "Orthanc did not start; its log:" >&2
    cat "$run_dir/orthanc.log" >&2
    return 1
}

echo "Orthanc $("$orthanc" --version 2>/dev/null | head -n 1 | awk '{print $NF}'), $(nproc) cores; results in $out_dir" >&2
status=0
for run in $(seq 1 "$runs"); do
    run_dir="$work_dir/run-$run"
    port="$(free_port)"
    start_orthanc "$run_dir" "$port"
    echo "== run $run/$runs: Orthanc on 127.0.0.1:$port" >&2
    if ! "$hds_bench" --base-url "http://127.0.0.1:$port/dicom-web" --json "${bench_arguments[@]}" \
        > "$out_dir/orthanc-run-$run.json"; then
        status=1
    fi
    stop_orthanc
    discard_run_dir "$run_dir"
done

if [[ "$runs" -gt 1 ]]; then
    python3 - "$out_dir"/orthanc-run-*.json <<'EOF'
import json, statistics, sys
runs = [json.load(open(path)) for path in sys.argv[1:]]
print(f"median of {len(runs)} runs")
print(f"{'phase':<18} {'req/s':>9} {'items/s':>9} {'MB/s':>8} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'errors':>6}")
for index, phase in enumerate(runs[0]["phases"]):
    rows = [run["phases"][index] for run in runs]
    median = lambda key: statistics.median(row[key] for row in rows)
    latency = lambda key: statistics.median(row["latency"][key] for row in rows)
    print(f"{phase['phase']:<18} {median('requests_per_s'):>9.1f} {median('items_per_s'):>9.1f} "
          f"{median('megabytes_per_s'):>8.1f} {latency('p50_ms'):>8.1f} {latency('p90_ms'):>8.1f} "
          f"{latency('p99_ms'):>8.1f} {sum(row['errors'] for row in rows):>6}")
EOF
fi
exit "$status"
