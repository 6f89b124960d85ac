"""The durable ledger (SPEC §10): PostgreSQL holds every batch, item and state change for good.

Redis stays the working store. Every state change there appends an event to a Redis stream (the
outbox, `outbox.py`) in the same atomic step; the archiver (`archiver.py`) copies those events
into PostgreSQL idempotently and acknowledges them only after its transaction committed.
"""
