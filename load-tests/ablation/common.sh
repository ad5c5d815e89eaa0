# Shared by run.sh and watermark.sh: the scratch databases the guaranteed pgbench scripts run
# against (the product's schema, migrated by a built `econsult`, seeded as the floor seeds),
# and the measurement of one script as database CPU per transaction. Source it from the
# repository root with `seconds` set; it sets `tmp` (removed, with every database made by
# scratch_db, on exit).
bin=
for b in target/release/econsult target/debug/econsult; do
  if [ -x "$b" ]; then bin=$b; break; fi
done
[ -n "$bin" ] || { echo "build econsult first (cargo build)" >&2; exit 1; }
psql_() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
tmp=$(mktemp -d)
scratch_dbs=()
cleanup() {
  for d in "${scratch_dbs[@]}"; do psql_ -c "DROP DATABASE IF EXISTS $d" || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
# scratch_db NAME: a database migrated with the product's schema and seeded with the floor's
# 1 000 000 slots, 100 000 threads and their patients on the GP's list.
scratch_db() {
  psql_ -c "CREATE DATABASE $1"
  scratch_dbs+=("$1")
  "$bin" --database-url "postgres://postgres@127.0.0.1:5432/$1" migrate >/dev/null
  echo "ablation: seeding $1 with 1 000 000 slots, 100 000 threads and list members" >&2
  psql_ -d "$1" <<'SQL'
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
}
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
measure() {  # measure NAME SCRIPT [DATABASE (default $db)]
  local before after n
  before=$(pg_cpu)
  n=$(pgbench -n -M prepared -c 8 -j 2 -T "$seconds" -D nslots=1000000 -D nthreads=100000 -f "$2" \
        -h 127.0.0.1 -U postgres "${3:-$db}" 2>&1 | sed -n 's/.*actually processed: \([0-9]*\).*/\1/p')
  sleep 0.5
  after=$(pg_cpu)
  python3 -c "print('$1', $n, round(1000 * ($after - $before) / $n, 3))"
}
# medians FILE: the median of each name's measurements in FILE (lines NAME N MS).
medians() {
  echo "# medians: database CPU ms per transaction (message: one write; booking: a HoldSlot and Book pair)"
  python3 - "$1" <<'PY'
import sys, collections
d = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, n, ms = line.split()
    d.setdefault(name, []).append(float(ms))
for name, v in d.items():
    print(f"{name:30s} median {sorted(v)[len(v) // 2]:.3f}  ({', '.join(f'{x:.3f}' for x in v)})")
PY
}
