#!/bin/bash
# What a published watermark would save the relay, measured in the replay: the guaranteed
# pgbench scripts as they are, against the product's schema, alternated with the same scripts
# whose relay pass marks the last pass's events published by raising one row's watermark
# (ablate.py ... watermark) against a schema with that row and without the index of
# unpublished events (`outbox_unpublished`), which a watermark makes unneeded. Database CPU
# per transaction, as run.sh measures it. Nothing in the product changes.
#
# usage: load-tests/ablation/watermark.sh [ROUNDS] [SECONDS]   (defaults 3 and 6)
# needs: as run.sh. Output: one line per measurement, then the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
seconds=${2:-6}
db=econsult_rowmark_$$
wm=econsult_watermark_$$
. load-tests/ablation/common.sh
scratch_db "$db"
scratch_db "$wm"
psql_ -d "$wm" <<'SQL'
DROP INDEX outbox_unpublished;
CREATE TABLE outbox_watermark (id INT PRIMARY KEY, seq BIGINT NOT NULL, published_at BIGINT NOT NULL);
INSERT INTO outbox_watermark VALUES (1, 0, 0);
SQL
for family in message booking; do
  python3 load-tests/ablation/ablate.py "load-tests/pgbench/$family-guaranteed.sql" watermark > "$tmp/$family-watermark.sql"
  for r in $(seq "$rounds"); do
    echo "watermark: $family, round $r of $rounds" >&2
    measure "$family-marked-per-row" "load-tests/pgbench/$family-guaranteed.sql" "$db"
    measure "$family-watermark" "$tmp/$family-watermark.sql" "$wm"
  done
done | tee "$tmp/all.txt"
medians "$tmp/all.txt"
