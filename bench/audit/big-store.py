#!/usr/bin/env python3
"""A large audit store for timing the daemon's start and retention (BENCHMARKS.md, eighteenth
session): 5,000,000 event records of about 310 bytes with a checkpoint every 100,000, in the
schema of watcher/src/pipeline/audit/writer.rs, and a last checkpoint whose frontier has the
right shape, so the daemon opens it. Not a verifiable log (the hashes are placeholders).

    python3 bench/audit/big-store.py /tmp/big.db
"""
import json
import sqlite3
import sys

path = sys.argv[1]
db = sqlite3.connect(path)
db.executescript("""PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL,
    trace_id TEXT, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_trace ON audit(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_records ON audit(kind, seq) WHERE kind <> 'event';
""")
body = ('{"type":"open","path":"/tmp/storm/file-000123","flags":["O_WRONLY","O_CREAT"],'
        '"pid":12345,"comm":"python3","exe":"/usr/bin/python3","result":3,"mode":420,'
        '"seq":123456,"ppid":1,"uid":0,"cwd":"/tmp/storm"}')
N = 5_000_000
rows = []
for s in range(1, N + 1):
    kind = "checkpoint" if s % 100_000 == 0 else "event"
    rows.append((s, "2026-12-07T07:00:00.000000Z", kind, "0123456789abcdef0123456789abcdef", body))
    if len(rows) == 100_000:
        db.executemany("INSERT INTO audit VALUES (?,?,?,?,?)", rows)
        db.commit()
        rows = []
size = N - 1
last = json.dumps({"seq": N, "kind": "checkpoint", "ts": "x", "trace_id": None, "prev": "00" * 32,
                   "body": {"size": size, "root": "00" * 32, "note": "x",
                            "frontier": ["ab" * 32] * bin(size).count("1")}})
db.execute("UPDATE audit SET record = ? WHERE seq = ?", (last, N))
db.commit()
