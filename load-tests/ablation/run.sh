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
. load-tests/ablation/common.sh
scratch_db "$db"
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
medians "$tmp/all.txt"
