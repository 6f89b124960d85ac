"""The archiver's Prometheus metrics (served by the archiver process on its own port)."""

from prometheus_client import Counter, Histogram

ARCHIVED = Counter("payouts_archived_events_total", "Outbox events committed to the ledger.")
# From the state change in Redis to its committed row: settlement at full speed keeps it ~1 s.
ARCHIVE_LAG = Histogram("payouts_archive_lag_seconds",
                        "Time from a state change to its event committed in the ledger.",
                        buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))
DEAD_LETTERED = Counter("payouts_archive_dead_letters_total",
                        "Outbox entries the ledger refused on their own, set aside in "
                        "payouts:outbox:dead (each one is a bug to look at: alert on any).")
