#!/usr/bin/env bash
# SQLite experiments in the sqlite3 shell (bench/HISTORY.md), under valgrind's callgrind:
#   1. moving 25,600 event IDs from 256 batch rows into mx_event_seen, with and without
#      ORDER BY, into an empty table and into one of 500,000 rows;
#   2. 1,000 rounds of a 2-row membership upsert and a 15-row progress upsert, as 2,000
#      autocommits against 1,000 transactions, and with page sizes of 4, 1 and 2 KiB.
# Prints the instruction totals (and the commit phase for 2). Needs sqlite3, valgrind, python3.
# Usage: bench/sqlite/experiments.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/mxbridge-sqlite-exp.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
total() { grep -o 'Collected : [0-9]*' | cut -d' ' -f3; }
commit_phase() { callgrind_annotate --inclusive=yes "$1" 2>/dev/null | awk '/sqlite3BtreeCommitPhaseOne/ {print $1; exit}'; }

sqlite3 t.db < "$HERE/seen-setup.sql" >/dev/null
ids=$(seq -s, 1 256)
move="INSERT INTO mx_event_seen (event_id, seen_at) SELECT i.value, 5 FROM mx_inbox_batch b, json_each(b.event_ids) i WHERE b.seq IN (SELECT value FROM json_each('[$ids]'))"
echo "$move ORDER BY 1 ON CONFLICT (event_id) DO NOTHING;" > sorted.sql
echo "$move ON CONFLICT (event_id) DO NOTHING;" > unsorted.sql
cp t.db big.db
sqlite3 big.db "WITH RECURSIVE b(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM b WHERE i < 500000)
  INSERT INTO mx_event_seen SELECT '\$'||substr(lower(hex(randomblob(32))),1,43), 1 FROM b;
  PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
for base in t big; do
    for v in sorted unsorted; do
        cp "$base.db" run.db
        n=$(valgrind --tool=callgrind --callgrind-out-file=cg.out sqlite3 run.db < "$v.sql" 2>&1 | total)
        echo "move 25,600 IDs, table $( [ $base = t ] && echo empty || echo '500k rows'), $v: $n instructions"
        rm -f run.db run.db-wal run.db-shm
    done
done

python3 "$HERE/small-writes.py" sep.sql tx.sql
for ps in 4096 1024 2048; do
    for v in sep tx; do
        [ "$ps" != 4096 ] && [ "$v" = tx ] && continue
        rm -f p.db p.db-wal p.db-shm
        (echo "PRAGMA page_size=$ps;"; cat "$HERE/small-writes-setup.sql") | sqlite3 p.db >/dev/null
        n=$(valgrind --tool=callgrind --callgrind-out-file=cg.out sqlite3 p.db < "$v.sql" 2>&1 | total)
        what=$( [ $v = sep ] && echo "2,000 autocommits" || echo "1,000 transactions")
        echo "small writes, page $ps, $what: $n instructions, commit phase $(commit_phase cg.out)"
    done
done
