#!/bin/bash
# usage: stmts.sh <econsult-load binary> <label>
# statements per booking flow on the private PG :5433 (pg_stat_statements, track=all)
B=$1; L=$2
P="psql -h 127.0.0.1 -p 5433 -U postgres -At"
run() { $B --target embedded-postgres --database-url postgres://postgres@127.0.0.1:5433/postgres --redis-url redis://127.0.0.1:6379 --scenario rush --patients-per-gp 200 --rate $1 --duration $2 --out /tmp/stmts-$L-$1 > /tmp/stmts-$L-$1.log 2>&1; }
flows() { python3 -c "import json;d=json.load(open(\"/tmp/stmts-$L-$1\"));print(sum(p[\"completed\"] for s in d[\"scenarios\"] for p in s[\"phases\"]))"; }
$P -c "select pg_stat_statements_reset()" >/dev/null; run 1 1s
n1=$($P -c "select sum(calls) from pg_stat_statements where toplevel")
$P -c "select pg_stat_statements_reset()" >/dev/null; run 300 15s
n300=$($P -c "select sum(calls) from pg_stat_statements where toplevel")
$P -c "select calls, plans, round(mean_plan_time::numeric,3) pl, round(mean_exec_time::numeric,3) ms, left(regexp_replace(query,'\s+',' ','g'),110) from pg_stat_statements where toplevel order by calls desc limit 30" > /tmp/stmts-$L-top.txt
f1=$(flows 1); f300=$(flows 300); echo "$L n1=$n1 f1=$f1 n300=$n300 f300=$f300 per_flow=$(python3 -c "print(round(($n300-$n1)/($f300-$f1),2))")"
