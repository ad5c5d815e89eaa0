#!/usr/bin/env python3
# Variants of a guaranteed pgbench script (load-tests/pgbench/*-guaranteed.sql) with one
# guarantee's rows left out, for run.sh: ablate.py SCRIPT none|relay|idempotency|outbox|audit|episode
# (and, for watermark.sh, the relay's mark moved to a watermark: ablate.py SCRIPT watermark)
"""What each variant leaves out:
- relay: the outbox relay's passes (the events' total order, and their marking as published);
- idempotency: the claimed key (the claim becomes a plain row source) and the stored answer;
- outbox: the events, and with them the relay's passes;
- audit: the access-log rows (the search's too);
- episode: the booking episode (the five-working-day figure's record): its read, upsert and
  outcome;
- none: nothing (the script as it is).
- watermark: leaves nothing out, but the relay's pass marks what the last pass gave published
  by raising one row's watermark (`outbox_watermark`, made by watermark.sh) instead of setting
  `published_at` on each of those events: one row updated per pass, not one per event.
"""
import re
import sys

def cte_spans(s, pred):
    """Spans (start, end) of ', dN AS (...)' CTEs whose body matches pred."""
    out = []
    for m in re.finditer(r",\s*d\d AS \(", s):
        i = m.end(); depth = 1; q = False
        while depth:
            c = s[i]
            if c == "'": q = not q
            elif not q and c == '(': depth += 1
            elif not q and c == ')': depth -= 1
            i += 1
        if pred(s[m.end():i]): out.append((m.start(), i))
    return out

def drop(s, pred):
    for a, b in reversed(cte_spans(s, pred)):
        s = s[:a] + s[b:]
    return s

def no_relay(s):
    return re.sub(r"\\set relay_per_mille \d+", r"\\set relay_per_mille 0", s)

def no_idempotency(s):
    s = re.sub(r"INSERT INTO idempotency \(scope.*?RETURNING 1 AS one\)", "SELECT 1 AS one)", s, flags=re.S)
    return drop(s, lambda body: body.lstrip().startswith("UPDATE idempotency"))

def no_outbox(s):
    return no_relay(drop(s, lambda body: body.lstrip().startswith("INSERT INTO outbox")))

def no_audit(s):
    s = drop(s, lambda body: body.lstrip().startswith("INSERT INTO audit_log"))
    # booking: the search's access-log row is a statement of its own
    return re.sub(r"INSERT INTO audit_log \(at.*?FindSlots.*?;\n", "", s, flags=re.S)

def no_episode(s):
    s = re.sub(r"SELECT request_id, patient_nin.*?LIMIT 1;\n", "", s, count=1, flags=re.S)
    s = re.sub(r"WITH d0 AS \(UPDATE booking_episodes SET closed_at.*?\),\n     d1 AS \(INSERT INTO booking_episodes.*?WHERE booking_episodes.patient_nin = excluded.patient_nin\),\n     d2 AS", "WITH d2 AS", s, flags=re.S)
    s = re.sub(r"WITH d0 AS \(UPDATE booking_episodes SET\n.*?ORDER BY o.requested_at DESC LIMIT 1\)\)\),\n     d1 AS", "WITH d1 AS", s, flags=re.S)
    return s

def watermark(s):
    out, n = re.subn(r"WITH marked AS \(UPDATE outbox SET published_at = (\d+)\n\s*WHERE seq > \(SELECT COALESCE\(MAX\(seq\), 0\) FROM outbox\) - 256 AND published_at IS NULL\)",
                     r"WITH marked AS (UPDATE outbox_watermark SET seq = (SELECT COALESCE(MAX(seq), 0) FROM outbox), published_at = \1)", s)
    assert n == 1, "the relay's marking statement not found"
    return out

src = open(sys.argv[1]).read()
name = sys.argv[2]
out = {"none": lambda s: s, "relay": no_relay, "idempotency": no_idempotency, "outbox": no_outbox,
       "audit": no_audit, "episode": no_episode, "watermark": watermark}[name](src)
sys.stdout.write(out)
