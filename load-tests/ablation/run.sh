#!/bin/bash
# What each guarantee's rows cost PostgreSQL: the guaranteed pgbench scripts
# (load-tests/pgbench/*-guaranteed.sql) with one guarantee's rows left out at a time
# (ablate.py), each against the least script, in alternating rounds, as database CPU per
# transaction (every postgres process, the exited backends' time included).
#
# usage: load-tests/ablation/run.sh [ROUNDS] [SECONDS]   (defaults 3 and 6)
# needs: pgbench, python3, a built `econsult` (target/debug or target/release) to migrate the
# scratch database, PostgreSQL on 127.0.0.1:5432 (PGUSER postgres). Only loopback.
# Output: one line per measurement, then the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
seconds=${2:-6}
db=econsult_ablation_$$
bin=
for b in target/release/econsult target/debug/econsult; do
  if [ -x "$b" ]; then bin=$b; break; fi
done
[ -n "$bin" ] || { echo "build econsult first (cargo build)" >&2; exit 1; }
psql_() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
tmp=$(mktemp -d)
psql_ -c "CREATE DATABASE $db"
trap 'psql_ -c "DROP DATABASE IF EXISTS $db" || true; rm -rf "$tmp"' EXIT
"$bin" --database-url "postgres://postgres@127.0.0.1:5432/$db" migrate >/dev/null
echo "ablation: seeding 1 000 000 slots, 100 000 threads and list members" >&2
psql_ -d "$db" <<'SQL'
INSERT INTO booking_gps (gp_uid, org_number, gp_id, hpr_number, display_name, municipality_number, list_capacity, list_status, updated_at)
VALUES ('pgb-gp', '999999999', 'pgb', '1', 'pgbench', '0301', 2500, 1, 0);
INSERT INTO booking_slots (slot_id, gp_uid, start_at, end_at, modality, acute_reserve, status, created_at)
SELECT 'pgb-' || i, 'pgb-gp', 4000000000000 + i * 60000, 4000000000000 + i * 60000 + 60000, 1, 0, 1, 0
  FROM generate_series(1::bigint, 1000000::bigint) i;
INSERT INTO consultation_threads (thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number,
  category, subject, state, submitted_at, due_at, updated_at)
SELECT 'pgb-t' || i, 'p' || i, 'pgb', 'pgbench', '999999999', '0301', 1, 'Sår hals', 1, 0, 0, 0
  FROM generate_series(1, 100000) i;
INSERT INTO booking_list_members (patient_nin, gp_uid, added_at) SELECT 'p' || i, 'pgb-gp', 0 FROM generate_series(1, 100000) i;
ANALYZE;
SQL
# CPU seconds of every postgres process, and of the backends that have exited (the
# postmaster's children's time).
pg_cpu() {
  python3 - <<'PY'
import os
t = 0
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        s = open(f'/proc/{pid}/stat').read()
    except OSError:
        continue
    if s[s.index('(') + 1:s.rindex(')')].startswith('postgres'):
        f = s[s.rindex(')') + 2:].split()
        t += sum(int(x) for x in f[11:15])
print(t / os.sysconf('SC_CLK_TCK'))
PY
}
measure() {  # measure NAME SCRIPT
  local before after n
  before=$(pg_cpu)
  n=$(pgbench -n -M prepared -c 8 -j 2 -T "$seconds" -D nslots=1000000 -D nthreads=100000 -f "$2" \
        -h 127.0.0.1 -U postgres "$db" 2>&1 | sed -n 's/.*actually processed: \([0-9]*\).*/\1/p')
  sleep 0.5
  after=$(pg_cpu)
  python3 -c "print('$1', $n, round(1000 * ($after - $before) / $n, 3))"
}
for family in message booking; do
  variants="none relay idempotency outbox audit"
  [ "$family" = booking ] && variants="$variants episode"
  for v in $variants; do
    python3 load-tests/ablation/ablate.py "load-tests/pgbench/$family-guaranteed.sql" "$v" > "$tmp/$family-$v.sql"
  done
  for r in $(seq "$rounds"); do
    echo "ablation: $family, round $r of $rounds" >&2
    measure "$family-least" "load-tests/pgbench/$family.sql"
    for v in $variants; do
      if [ "$v" = none ]; then name=$family-guaranteed; else name=$family-without-$v; fi
      measure "$name" "$tmp/$family-$v.sql"
    done
  done
done | tee "$tmp/all.txt"
echo "# medians: database CPU ms per transaction (message: one write; booking: a HoldSlot and Book pair)"
python3 - "$tmp/all.txt" <<'PY'
import sys, collections
d = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, n, ms = line.split()
    d.setdefault(name, []).append(float(ms))
for name, v in d.items():
    print(f"{name:30s} median {sorted(v)[len(v) // 2]:.3f}  ({', '.join(f'{x:.3f}' for x in v)})")
PY
