"""The load anchor: PostgreSQL's own binary COPY of the curated rows, from a file on the server,
into a fresh table without indexes: the floor any loader is measured against.

    python anchor_copy.py DATABASE_URL FILE.bin
"""
import sys

import psycopg

url, path = sys.argv[1], sys.argv[2]
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute("DROP TABLE IF EXISTS bench_copy")
    conn.execute("CREATE TABLE bench_copy (LIKE tripflow.trips)")
    conn.execute(f"COPY bench_copy FROM '{path}' (FORMAT binary)")
    conn.execute("DROP TABLE bench_copy")
