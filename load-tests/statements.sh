#!/bin/bash
# Statements per flow of one scenario, by statement, from pg_stat_statements; Redis commands per
# flow from INFO commandstats. Runs econsult-load at a fixed rate for 20 s and takes both
# counters at t = 4 s and t = 14 s of the run (seeding and the checks left out), divided by the
# flows completed in between.
#
#   load-tests/statements.sh SCENARIO RATE OUT_PREFIX
#   e.g. load-tests/statements.sh messaging 100 /tmp/st-messaging
#
# Needs PostgreSQL at 127.0.0.1:5432 with pg_stat_statements loaded (it is not by default):
#   psql -h 127.0.0.1 -U postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
#   pg_ctlcluster 15 main restart   # then: CREATE EXTENSION pg_stat_statements;
#   (and pg_stat_statements.track_planning = on for the plan column)
# and Redis at 127.0.0.1:6379. Undo with ALTER SYSTEM RESET and a restart before measuring CPU.
# LOAD names the binary (default target/release/econsult-load).
# Output: OUT_PREFIX.txt, one line per statement: calls per flow | executor µs per flow |
# planner µs per flow | the statement; and the totals and Redis commands on stdout.
set -euo pipefail
sc=$1; rate=$2; out=$3
LOAD=${LOAD:-target/release/econsult-load}
export PGOPTIONS="-c client_min_messages=warning"
P="psql -h 127.0.0.1 -U postgres -Atq"
snap() {
  $P -c "DROP TABLE IF EXISTS econsult_st_$1; CREATE TABLE econsult_st_$1 AS SELECT queryid, dbid, query, calls, total_exec_time, total_plan_time FROM pg_stat_statements"
  redis-cli -h 127.0.0.1 -p 6379 info commandstats > "$out.redis-$1"
}
completed_at() { grep "t= *$1s" "$out.err" | tail -1 | sed -E 's/.*completed=([0-9]+).*/\1/'; }
"$LOAD" --target embedded-postgres --database-url postgres://postgres@127.0.0.1:5432/postgres \
  --redis-url redis://127.0.0.1:6379 --scenario "$sc" --patients-per-gp 200 --subscribers 500 \
  --rate "$rate" --duration 20s --out "$out.json" > /dev/null 2> "$out.err" &
pid=$!
for t in 4 14; do
  deadline=$((SECONDS + 120))
  until grep -q "t= *${t}s" "$out.err" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "no progress line t=${t}s" >&2; kill $pid; exit 1; }
    sleep 0.2
  done
  if [ $t = 4 ]; then snap a; c1=$(completed_at 4); else snap b; c2=$(completed_at 14); fi
done
wait $pid
flows=$((c2 - c1))
echo "flows $flows"
$P -F '|' -c "SELECT round((b.calls - coalesce(a.calls, 0))::numeric / $flows, 2),
  round(((b.total_exec_time - coalesce(a.total_exec_time, 0)) / $flows * 1000)::numeric, 1),
  round(((b.total_plan_time - coalesce(a.total_plan_time, 0)) / $flows * 1000)::numeric, 1),
  left(regexp_replace(b.query, '\s+', ' ', 'g'), 200)
  FROM econsult_st_b b LEFT JOIN econsult_st_a a USING (queryid, dbid)
  WHERE b.calls - coalesce(a.calls, 0) > 0 AND b.query NOT LIKE '%econsult_st_%' ORDER BY 1 DESC" > "$out.txt"
$P -c "DROP TABLE econsult_st_a; DROP TABLE econsult_st_b"
awk -F'|' '{n+=$1; e+=$2; p+=$3} END {printf "statements per flow %.1f, executor %.0f µs, planner %.0f µs\n", n, e, p}' "$out.txt"
python3 - "$out" "$flows" <<'PY'
import re, sys
out, flows = sys.argv[1], int(sys.argv[2])
def read(f):
    return {m.group(1): int(m.group(2)) for l in open(f) if (m := re.match(r'cmdstat_(\w+):calls=(\d+)', l))}
a, b = read(out + '.redis-a'), read(out + '.redis-b')
n = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0 and k != 'info'}
for k in sorted(n, key=lambda k: -n[k]):
    print(f"redis {k} {n[k] / flows:.2f} per flow")
print(f"redis commands per flow {sum(n.values()) / flows:.2f}")
PY
