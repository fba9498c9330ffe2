"""Schema migrations: the ordered SQL files of migrations/, each applied once.

A migration runs in one transaction with its schema_migrations row, under an advisory lock, so
two fleet instances starting together apply it once and a crash leaves it applied or not at all.
"""

from __future__ import annotations

import time
from importlib import resources

import psycopg

__all__ = ["MIGRATIONS_LOCK", "migrate", "migrations"]

# Any constant both instances agree on: the lock serialises concurrent `migrate` runs.
MIGRATIONS_LOCK = 0x5EA11E14


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration shipped, in the order they apply (by file name)."""
    folder = resources.files("sealink.fleet").joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Apply the migrations not yet applied; returns their names (empty: nothing to do)."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name text PRIMARY KEY, applied_ms bigint NOT NULL)"
        )
        done = {str(r[0]) for r in conn.execute("SELECT name FROM schema_migrations")}
        for name, sql in migrations():
            if name in done:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (name, applied_ms) VALUES (%s, %s)",
                (name, int(time.time() * 1000)),
            )
            applied.append(name)
    return applied
