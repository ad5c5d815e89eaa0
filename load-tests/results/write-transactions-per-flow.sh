#!/bin/bash
# usage: write-transactions-per-flow.sh <econsult-load binary> <label>: write transactions per
# rush flow on a private PostgreSQL :5433 with pg_stat_statements (track=all): a 1-flow run
# subtracted from a 1000-flow run. COMMIT counts the BEGIN/COMMIT transactions (the flow's and
# the relay's and stats consumer's); the FindSlots column counts the autocommit statement with
# which FindSlots wrote its request before booking requests were episodes. The private server:
#   runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D /tmp/pg5433/data --auth=trust -U postgres
#   runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pg5433/data -l /tmp/pg5433/log -o \
#     "-p 5433 -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp/pg5433 \
#      -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" start
#   psql -h 127.0.0.1 -p 5433 -U postgres -c "create extension pg_stat_statements"
mkdir -p /tmp/lt
B=$1; L=$2
P="psql -h 127.0.0.1 -p 5433 -U postgres -At"
run() { $B --target embedded-postgres --database-url postgres://postgres@127.0.0.1:5433/postgres --redis-url redis://127.0.0.1:6379 --scenario rush --patients-per-gp 200 --rate $1 --duration $2 --max-requests $3 --out /tmp/lt/txns-$L-$1.json > /tmp/lt/txns-$L-$1.log 2>&1; }
flows() { python3 -c "import json;d=json.load(open('/tmp/lt/txns-$L-$1.json'));print(sum(p['completed'] for s in d['scenarios'] for p in s['phases']))"; }
q() { $P -c "select coalesce(sum(calls),0) from pg_stat_statements where toplevel and $1"; }
measure() {
  $P -c "select pg_stat_statements_reset()" >/dev/null; run $1 $2 $3
  echo "$(q "query = 'COMMIT'") $(q "query ~* '^\s*(WITH d0 AS \(INSERT INTO booking_requests|INSERT INTO booking_requests)'") $(q "query ~* 'INSERT INTO booking_episodes'") $(q "true")"
}
read c1 f1 e1 a1 <<<"$(measure 1 1s 1)"; n1=$(flows 1)
read c2 f2 e2 a2 <<<"$(measure 100 10s 1000)"; n2=$(flows 100)
$P -c "select calls, left(regexp_replace(query,'\s+',' ','g'),120) from pg_stat_statements where toplevel order by calls desc limit 25" > /tmp/lt/txns-$L-top.txt
python3 - <<PY
d=$n2-$n1
print("$L flows=%d COMMIT/flow=%.2f findslots-writes/flow=%.2f episode-upserts/flow=%.2f statements/flow=%.2f" % (d, ($c2-$c1)/d, ($f2-$f1)/d, ($e2-$e1)/d, ($a2-$a1)/d))
PY
