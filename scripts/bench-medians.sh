#!/usr/bin/env bash
# Prints the median of every hds-bench figure over several runs, and, given
# runs of several servers, each server's ratio to the first (docs/benchmarks.md).
#
# Usage: scripts/bench-medians.sh RUN.json...
#
# Files are grouped by server name: the part of the file name before `-run-`
# (`orthanc-run-1.json`, `hds-current-run-2.json`, as scripts/bench-orthanc.sh
# and scripts/bench-hds.sh name them). Each figure's median is taken on its
# own. Ratios compare every server with the first group in argument order:
# throughput as server / baseline, latency as baseline / server, so a ratio
# above 1 always means faster than the baseline. The `items/s range` column is
# the lowest and highest run: on a shared 2-core VM the runs of one build spread
# by up to a fifth, and a difference inside that spread is not a result.
set -euo pipefail
[[ $# -gt 0 ]] || { sed -n '2,12p' "$0"; exit 64; }
python3 - "$@" <<'PYTHON'
import json, os, statistics, sys
groups = {}
for path in sys.argv[1:]:
    name = os.path.basename(path).split("-run-")[0]
    groups.setdefault(name, []).append(json.load(open(path)))

def medians(runs):
    table = {}
    for index, phase in enumerate(runs[0]["phases"]):
        rows = [run["phases"][index] for run in runs]
        med = lambda f: statistics.median(f(row) for row in rows)
        table[phase["phase"]] = {
            "req/s": med(lambda r: r["requests_per_s"]),
            "items/s": med(lambda r: r["items_per_s"]),
            "MB/s": med(lambda r: r["megabytes_per_s"]),
            "p50": med(lambda r: r["latency"]["p50_ms"]),
            "p90": med(lambda r: r["latency"]["p90_ms"]),
            "p99": med(lambda r: r["latency"]["p99_ms"]),
            "errors": sum(r["errors"] for r in rows),
            "range": (min(r["items_per_s"] for r in rows), max(r["items_per_s"] for r in rows)),
        }
    return table

tables = {name: medians(runs) for name, runs in groups.items()}
for name, runs in groups.items():
    print(f"{name}: median of {len(runs)} runs")
    print(f"  {'phase':<14} {'req/s':>8} {'items/s':>8} {'MB/s':>7} {'p50_ms':>7} {'p90_ms':>7} {'p99_ms':>7} {'errors':>6}  items/s range")
    for phase, f in tables[name].items():
        print(f"  {phase:<14} {f['req/s']:>8.1f} {f['items/s']:>8.1f} {f['MB/s']:>7.1f} "
              f"{f['p50']:>7.2f} {f['p90']:>7.2f} {f['p99']:>7.2f} {f['errors']:>6}  "
              f"{f['range'][0]:.0f}-{f['range'][1]:.0f}")
names = list(tables)
if len(names) > 1:
    base = names[0]
    print(f"ratios to {base} (>1 = faster): items/s, MB/s, p50, p99")
    for name in names[1:]:
        for phase, f in tables[name].items():
            b = tables[base].get(phase)
            if not b:
                continue
            ratio = lambda x, y: x / y if y else float("nan")
            print(f"  {name:<12} {phase:<14} {ratio(f['items/s'], b['items/s']):>6.2f} "
                  f"{ratio(f['MB/s'], b['MB/s']):>6.2f} {ratio(b['p50'], f['p50']):>6.2f} "
                  f"{ratio(b['p99'], f['p99']):>6.2f}")
PYTHON
