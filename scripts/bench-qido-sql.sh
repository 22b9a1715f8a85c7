#!/usr/bin/env bash
# The SQL of a QIDO study search at archive scale, before and after token-driven paging
# (docs/benchmarks.md, "QIDO cost and archive size"). Builds one synthetic index of
# STUDIES studies (default 200,000: 10^6 instances at 5 per study) with the schema of
# crates/hds-index/migrations, in SQLite (sqlite3 CLI) and, with PG_URL set, in PostgreSQL
# (psql), and times the statements of a search by PatientID (one match) and by a 31-day
# StudyDate range (31 day tokens, a page of 100 studies) in their old and new shapes.
#
# Usage: scripts/bench-qido-sql.sh [STUDIES]     (PG_URL=postgres://... for PostgreSQL)
# Tokens are readable stand-ins (`pid777`, `D20030105`); keyed tokens are 32-byte HMACs,
# which only makes index entries a little longer.
set -euo pipefail
repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
migrations="$repository_root/crates/hds-index/migrations"
studies="${1:-200000}"
work="$(mktemp -d -t bench-qido-sql.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The 31 day tokens of 2003-01-05 .. 2003-02-04, as QIDO's date cover makes them.
days=()
for day in $(seq 5 31); do days+=("D200301$(printf %02d "$day")"); done
for day in 1 2 3 4; do days+=("D200302$(printf %02d "$day")"); done
tokens_sqlite="$(printf "CAST('%s' AS BLOB)," "${days[@]}")"; tokens_sqlite="${tokens_sqlite%,}"
tokens_pg="$(printf "convert_to('%s','UTF8')," "${days[@]}")"; tokens_pg="${tokens_pg%,}"

old_search() { # the search as one statement (before)
    echo "SELECT st.id, st.uid_token, st.attributes,
        (SELECT COUNT(*) FROM dicom_series c WHERE c.study_id = st.id),
        (SELECT COUNT(*) FROM dicom_instances c WHERE c.study_id = st.id)
        FROM dicom_studies st WHERE st.service = 'svc'
        AND st.id IN (SELECT t.study_id FROM dicom_study_tokens t WHERE t.token IN ($1))
        ORDER BY st.id LIMIT 100 OFFSET 0"
}
new_page() { # the page of ids, from the token index alone (after)
    echo "SELECT DISTINCT d.id FROM (SELECT t.study_id AS id FROM dicom_study_tokens t
        WHERE t.token IN ($1)) d WHERE 1 = 1 ORDER BY d.id LIMIT 100 OFFSET 0"
}
new_rows() { # the page's rows by primary key (after)
    echo "SELECT st.id, st.uid_token, st.attributes,
        (SELECT COUNT(*) FROM dicom_series c WHERE c.study_id = st.id),
        (SELECT COUNT(*) FROM dicom_instances c WHERE c.study_id = st.id)
        FROM dicom_studies st WHERE st.id IN ($1) AND st.service = 'svc' ORDER BY st.id"
}

echo "== SQLite $(sqlite3 --version | cut -d' ' -f1), $studies studies" >&2
sqlite3 "$work/index.db" > /dev/null <<SQL
PRAGMA journal_mode=off; PRAGMA synchronous=off;
.read $migrations/sqlite/0001_index.sql
CREATE TEMP TABLE n(i INTEGER PRIMARY KEY);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $studies) INSERT INTO n SELECT i FROM c;
INSERT INTO dicom_studies (id, service, uid_token, attributes) SELECT i, 'svc', CAST('u' || i AS BLOB), zeroblob(300) FROM n;
CREATE TEMP TABLE d AS SELECT i, replace(date(julianday('1995-01-01') + abs(random()) % 10950), '-', '') AS dt FROM n;
INSERT INTO dicom_study_tokens SELECT CAST('pid' || i AS BLOB), i FROM n;
INSERT INTO dicom_study_tokens SELECT CAST('D' || dt AS BLOB), i FROM d;
INSERT INTO dicom_study_tokens SELECT CAST('M' || substr(dt, 1, 6) AS BLOB), i FROM d;
INSERT INTO dicom_study_tokens SELECT CAST('Y' || substr(dt, 1, 4) AS BLOB), i FROM d;
INSERT INTO dicom_series (study_id, uid_token, attributes) SELECT i, CAST('s' || i AS BLOB), zeroblob(100) FROM n;
SQL
python3 - "$work/index.db" "$(old_search "CAST('pid777' AS BLOB)")" "$(old_search "$tokens_sqlite")" \
    "$(new_page "CAST('pid777' AS BLOB)")" "$(new_page "$tokens_sqlite")" "$(new_rows IDS)" \
    "$migrations/sqlite/0004_search_paths.sql" <<'PY'
import sqlite3, statistics, sys, time
path, old_pid, old_date, page_pid, page_date, rows, migration = sys.argv[1:]
db = sqlite3.connect(path)
def timed(run, n):
    samples = []
    for _ in range(n):
        start = time.perf_counter(); run(); samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return "p50 %.2f ms, p99 %.2f ms (%d runs)" % (statistics.median(samples), samples[max(0, int(len(samples) * .99) - 1)], n)
def two_statements(page):
    ids = [row[0] for row in db.execute(page)]
    db.execute(rows.replace("IDS", ",".join(map(str, ids)) or "NULL")).fetchall()
print("before, PatientID:", timed(lambda: db.execute(old_pid).fetchall(), 20))
print("before, date range:", timed(lambda: db.execute(old_date).fetchall(), 20))
db.executescript(open(migration).read())
print("after, PatientID:", timed(lambda: two_statements(page_pid), 200))
print("after, date range:", timed(lambda: two_statements(page_date), 200))
PY

[[ -n "${PG_URL:-}" ]] || exit 0
echo "== PostgreSQL $(psql "$PG_URL" -qAtc 'SHOW server_version'), $studies studies" >&2
psql() { command psql "$PG_URL" -qAt -v ON_ERROR_STOP=1 "$@"; }
psql -c "DROP SCHEMA IF EXISTS qido_bench CASCADE; CREATE SCHEMA qido_bench"
export PGOPTIONS="-c search_path=qido_bench"
psql -f "$migrations/postgres/0001_index.sql"
psql <<SQL
INSERT INTO dicom_studies (service, uid_token, attributes) SELECT 'svc', convert_to('u' || i, 'UTF8'), decode(repeat('00', 300), 'hex') FROM generate_series(1, $studies) i;
CREATE TEMP TABLE d AS SELECT i, to_char(date '1995-01-01' + (random() * 10950)::int, 'YYYYMMDD') AS dt FROM generate_series(1, $studies) i;
INSERT INTO dicom_study_tokens SELECT convert_to('pid' || i, 'UTF8'), i FROM generate_series(1, $studies) i;
INSERT INTO dicom_study_tokens SELECT convert_to('D' || dt, 'UTF8'), i FROM d;
INSERT INTO dicom_study_tokens SELECT convert_to('M' || substr(dt, 1, 6), 'UTF8'), i FROM d;
INSERT INTO dicom_study_tokens SELECT convert_to('Y' || substr(dt, 1, 4), 'UTF8'), i FROM d;
INSERT INTO dicom_series (study_id, uid_token, attributes) SELECT i, convert_to('s' || i, 'UTF8'), decode(repeat('00', 100), 'hex') FROM generate_series(1, $studies) i;
ANALYZE;
SQL
# Server-side execution time of a statement, p50 and p99 over N runs.
executed() {
    for _ in $(seq "$2"); do psql -c "EXPLAIN (ANALYZE) $1" | sed -n 's/^Execution Time: \([0-9.]*\) ms/\1/p'; done |
        sort -n | awk '{a[NR] = $1} END {k = int(NR * .99); if (k < 1) k = NR; printf "p50 %.2f ms, p99 %.2f ms (%d runs)\n", a[int((NR + 1) / 2)], a[k], NR}'
}
echo "before, PatientID: $(executed "$(old_search "convert_to('pid777','UTF8')")" 10)"
echo "before, date range: $(executed "$(old_search "$tokens_pg")" 10)"
psql -f "$migrations/postgres/0004_search_paths.sql" -c ANALYZE
ids="$(psql -c "$(new_page "$tokens_pg")" | paste -sd,)"
echo "after, PatientID (ids): $(executed "$(new_page "convert_to('pid777','UTF8')")" 30)"
echo "after, date range (ids): $(executed "$(new_page "$tokens_pg")" 30)"
echo "after, date range (rows of the page): $(executed "$(new_rows "$ids")" 30)"
psql -c "DROP SCHEMA qido_bench CASCADE"
