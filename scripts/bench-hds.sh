#!/usr/bin/env bash
# Measures an hds binary with hds-bench, the same way scripts/bench-orthanc.sh
# measures Orthanc (docs/benchmarks.md, "DICOMweb load").
#
# Usage: scripts/bench-hds.sh [--runs N] [--out DIR] [--name NAME] [--https] [-- HDS-BENCH-ARGUMENTS...]
#
# Each run starts `hds up` on a fresh data dir (a temporary directory) on a
# free loopback port, waits until the DICOM service `default/dicom` answers an
# authenticated QIDO request, runs hds-bench against
# {scheme}://127.0.0.1:PORT/dicom/default/dicom/v2 with a bearer token from
# `hds account get-access-token`, and stops hds. Plain HTTP by default (as
# Orthanc is measured); --https measures the TLS listener with the data dir's
# local CA. Results: one JSON file per run, `{NAME}-run-{N}.json` in --out.
# With --runs > 1 the median of every figure over the runs is printed.
#
# Environment: HDS_BIN (the hds binary; default target/release/hds),
# HDS_BENCH (the hds-bench binary; default target/release/hds-bench),
# HDS_EXTRA_ARGS (more `hds up` options, split on spaces).
set -euo pipefail

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bench-common.sh
source "$repository_root/scripts/bench-common.sh"
hds_bin="${HDS_BIN:-$repository_root/target/release/hds}"
hds_bench="${HDS_BENCH:-$repository_root/target/release/hds-bench}"

runs=1
out_dir=""
name="hds"
scheme="http"
bench_arguments=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --https) scheme="https"; shift ;;
        --) shift; bench_arguments=("$@"); break ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (hds-bench options go after --)" >&2; exit 64 ;;
    esac
done

[[ -x "$hds_bin" ]] || { echo "no hds at $hds_bin: cargo build --release -p hds, or set HDS_BIN" >&2; exit 69; }
[[ -x "$hds_bench" ]] || { echo "no hds-bench at $hds_bench: cargo build --release -p hds-bench" >&2; exit 69; }

work_dir="$(mktemp -d -t bench-hds.XXXXXX)"
[[ -n "$out_dir" ]] || out_dir="$work_dir/results"
mkdir -p "$out_dir"
hds_pid=""

stop_hds() {
    if [[ -n "$hds_pid" ]] && kill -0 "$hds_pid" 2>/dev/null; then
        kill -TERM "$hds_pid"
        wait "$hds_pid" 2>/dev/null || true
    fi
    hds_pid=""
}
cleanup() {
    stop_hds
    discard_run_dirs_under "$work_dir"
}
trap cleanup EXIT

# Prints a data-plane bearer token for the hds on $1 (endpoint) with data dir $2.
access_token() {
    "$hds_bin" account get-access-token --data-dir "$2" --endpoint "$1" \
        --resource https://dicom.healthcareapis.azure.com 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])' 2>/dev/null
}

# Starts hds on a fresh data dir; sets hds_pid and token once the service serves data.
start_hds() {
    local run_dir="$1" port="$2" endpoint="$scheme://127.0.0.1:$2"
    local curl_tls=()
    mkdir -p "$run_dir/data"
    local listener_flags=(--listen "127.0.0.1:$port")
    [[ "$scheme" == "http" ]] && listener_flags+=(--http)
    # shellcheck disable=SC2086
    "$hds_bin" up --data-dir "$run_dir/data" "${listener_flags[@]}" ${HDS_EXTRA_ARGS:-} \
        > "$run_dir/hds.log" 2>&1 &
    hds_pid=$!
    token=""
    for _ in $(seq 1 300); do
        kill -0 "$hds_pid" 2>/dev/null || break
        [[ "$scheme" == "https" && -f "$run_dir/data/tls/ca.pem" ]] && curl_tls=(--cacert "$run_dir/data/tls/ca.pem")
        if [[ -z "$token" ]]; then
            token="$(access_token "$endpoint" "$run_dir/data" || true)"
        fi
        if [[ -n "$token" ]] && curl -fs -o /dev/null "${curl_tls[@]}" \
            -H "Authorization: Bearer $token" \
            "$endpoint/dicom/default/dicom/v2/studies?limit=1"; then
            return 0
        fi
        sleep 0.2
    done
    echo "hds did not start serving default/dicom; its log:" >&2
    cat "$run_dir/hds.log" >&2
    return 1
}

echo "$("$hds_bin" --version 2>/dev/null || echo hds) ($hds_bin), $(nproc) cores; results in $out_dir" >&2
status=0
for run in $(seq 1 "$runs"); do
    run_dir="$work_dir/run-$run"
    port="$(free_port)"
    start_hds "$run_dir" "$port"
    echo "== run $run/$runs: $name on 127.0.0.1:$port, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    tls_arguments=()
    [[ "$scheme" == "https" ]] && tls_arguments=(--ca-cert "$run_dir/data/tls/ca.pem")
    if ! HDS_BENCH_TOKEN="$token" "$hds_bench" \
        --base-url "$scheme://127.0.0.1:$port/dicom/default/dicom/v2" "${tls_arguments[@]}" \
        --json "${bench_arguments[@]}" > "$out_dir/$name-run-$run.json"; then
        status=1
    fi
    stop_hds
    discard_run_dir "$run_dir"
done

if [[ "$runs" -gt 1 ]]; then
    "$repository_root/scripts/bench-medians.sh" "$out_dir"/"$name"-run-*.json
fi
exit "$status"
