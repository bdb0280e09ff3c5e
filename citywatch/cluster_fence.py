"""Fencing tokens for partitions: a worker that lost its partition cannot commit for it.

The NATS lease says who owns a partition, and a worker that cannot renew stops itself before
the lease may expire. That is fencing by time: a worker paused (a long GC, SIGSTOP, a VM
migration) past its lease could still finish a batch after the next owner restored the state.
Here each claim takes the next epoch of the partition in PostgreSQL, and every transaction a
partition's pipeline commits first checks, under a shared row lock, that the epoch is still its
own. The claim's UPDATE waits for a transaction holding that lock, so either the old owner's
batch commits before the new owner reads the state, or it finds the newer epoch and rolls back
(its messages unacknowledged, redelivered to the new owner).
"""

from __future__ import annotations

from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS cw_partition_epochs (
    partition  text PRIMARY KEY,
    epoch      bigint NOT NULL,
    owner      text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
)
"""


class Fenced(Exception):
    """The partition has a newer owner: this transaction must not commit."""


def migrate(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA)


def claim(conn: psycopg.Connection[Any], partition: str, owner: str) -> int:
    """Take the partition's next epoch (committed before returning). Waits for a transaction
    of the previous owner that is under way, so what it commits is there to restore."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO cw_partition_epochs (partition, epoch, owner) VALUES (%s, 1, %s) "
            "ON CONFLICT (partition) DO UPDATE SET epoch = cw_partition_epochs.epoch + 1, "
            "owner = EXCLUDED.owner, claimed_at = now() RETURNING epoch",
            (partition, owner)).fetchone()
    assert row is not None
    return int(row[0])


class EpochFence:
    """The check a partition's pipeline runs first in each of its transactions.

    The transaction also gets an idle limit: a worker paused in the middle of one holds the
    row lock a claim waits for; after ``idle_s`` the server ends its session (its batch rolls
    back, to be redelivered) and the claim goes on. A batch's statements follow each other
    within milliseconds; the lease (10 s) expires long after the limit."""

    def __init__(self, partition: str, epoch: int, idle_s: float = 5.0) -> None:
        self.partition = partition
        self.epoch = epoch
        self._idle = f"{int(idle_s * 1000)}ms"

    def __call__(self, cur: psycopg.Cursor[Any]) -> None:
        row = cur.execute(
            "SELECT epoch, owner, set_config('idle_in_transaction_session_timeout', %s, true) "
            "FROM cw_partition_epochs WHERE partition = %s FOR SHARE",
            (self._idle, self.partition)).fetchone()
        if row is None or int(row[0]) != self.epoch:
            raise Fenced(f"partition {self.partition}: epoch {self.epoch} is over "
                         f"(now {row[0] if row else 'none'}, owner {row[1] if row else '?'})")
