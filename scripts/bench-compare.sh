#!/usr/bin/env bash
# Interleaved A/B(/C) DICOMweb load runs: Orthanc and one or more hds binaries,
# run after run in rotating order, so load from other work on the machine hits
# every server alike (docs/benchmarks.md, "DICOMweb load").
#
# Usage: scripts/bench-compare.sh [--runs N] [--out DIR] [--no-orthanc] [--keep-caches]
#            [--hds NAME=BINARY]... [-- HDS-BENCH-ARGUMENTS...]
#
# NAME=BINARY may carry `hds up` options after the binary, e.g.
#   --hds 'hds-relaxed=target/release/hds --durability relaxed'
#
# Example:
#   scripts/bench-compare.sh --runs 3 --out /tmp/cmp-512 \
#       --hds hds-current=../bench-bin/hds-current --hds hds-pre-enc=../bench-bin/hds-pre-enc \
#       -- --studies 40 --instances-per-study 25 --requests 5000 --seed 42
#
# Run r starts with server (r-1) mod S, so each server goes first once in S
# runs. Every run of every server is on a fresh Orthanc / data dir
# (scripts/bench-orthanc.sh, scripts/bench-hds.sh). Results: NAME-run-R.json
# in --out; at the end scripts/bench-medians.sh prints medians and ratios to
# the first server (Orthanc unless --no-orthanc). Before each run the page
# cache is written back and emptied (`sync`, then drop_caches, which needs
# root); --keep-caches only writes it back.
set -euo pipefail

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=3
out_dir=""
orthanc=1
drop_caches=1
servers=()
bench_arguments=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        --no-orthanc) orthanc=0; shift ;;
        --keep-caches) drop_caches=0; shift ;;
        --hds) servers+=("$2"); shift 2 ;;
        --) shift; bench_arguments=("$@"); break ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (hds-bench options go after --)" >&2; exit 64 ;;
    esac
done
if [[ "$drop_caches" == 1 && ! -w /proc/sys/vm/drop_caches ]]; then
    echo "not allowed to drop the page cache between runs (run as root, or pass --keep-caches)" >&2
    exit 77
fi
[[ -n "$out_dir" ]] || out_dir="$(mktemp -d -t bench-compare.XXXXXX)"
mkdir -p "$out_dir"
[[ "$orthanc" == 1 ]] && servers=("orthanc" "${servers[@]}")
[[ ${#servers[@]} -gt 0 ]] || { echo "nothing to measure: give --hds NAME=BINARY" >&2; exit 64; }
# Data dirs of finished runs are set aside and deleted after the last run (see
# discard_run_dir in scripts/bench-hds.sh).
BENCH_TRASH_DIR="$(mktemp -d -t bench-trash.XXXXXX)"
export BENCH_TRASH_DIR
# The deletions are synced before exiting. ext4 without a journal does not reuse a deleted inode
# for a minute after its deletion, six while its inode table block is not yet written, and scans
# past every such inode for each file it creates: a comparison started right after this one
# would pay that on every instance its servers store.
trap 'rm -rf "$BENCH_TRASH_DIR"; sync' EXIT

run_one() {
    local server="$1" run="$2"
    local scratch
    # Every run starts with no dirty pages: otherwise the page cache's writeback of the
    # previous runs' data (hundreds of MB each) throttles whichever server comes next.
    sync
    # And, where allowed (root), with the page cache emptied: on a VM whose memory the host
    # backs lazily and takes back once free, a STOW that grows the cache into such memory pays
    # the host's first-touch cost on every page it writes (docs/benchmarks.md, "Three things
    # about this VM"), and which server met that depended on what ran before it.
    if [[ "$drop_caches" == 1 ]]; then echo 3 > /proc/sys/vm/drop_caches; fi
    scratch="$(mktemp -d -t bench-one.XXXXXX)"
    if [[ "$server" == "orthanc" ]]; then
        "$repository_root/scripts/bench-orthanc.sh" --runs 1 --out "$scratch" -- "${bench_arguments[@]}" \
            && mv "$scratch/orthanc-run-1.json" "$out_dir/orthanc-run-$run.json"
    else
        local name="${server%%=*}" binary options
        read -r binary options <<< "${server#*=}"
        HDS_BIN="$binary" HDS_EXTRA_ARGS="${HDS_EXTRA_ARGS:-} $options" \
            "$repository_root/scripts/bench-hds.sh" --runs 1 --out "$scratch" --name "$name" \
            -- "${bench_arguments[@]}" \
            && mv "$scratch/$name-run-1.json" "$out_dir/$name-run-$run.json"
    fi
    local status=$?
    rm -rf "$scratch"
    return $status
}

status=0
count=${#servers[@]}
for run in $(seq 1 "$runs"); do
    for offset in $(seq 0 $((count - 1))); do
        server="${servers[$(((run - 1 + offset) % count))]}"
        echo "=== run $run/$runs: ${server%%=*}, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        echo "run $run ${server%%=*} load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out_dir/load.txt"
        run_one "$server" "$run" || status=1
    done
done

files=()
for server in "${servers[@]}"; do
    name="${server%%=*}"
    for run in $(seq 1 "$runs"); do
        [[ -f "$out_dir/$name-run-$run.json" ]] && files+=("$out_dir/$name-run-$run.json")
    done
done
"$repository_root/scripts/bench-medians.sh" "${files[@]}" | tee "$out_dir/medians.txt"
exit "$status"
