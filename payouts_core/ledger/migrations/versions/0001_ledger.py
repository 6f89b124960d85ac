"""The ledger: batches, items and their append-only event trail, per client.

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE batches (
        client        text        NOT NULL,
        batch_id      text        NOT NULL,
        fingerprint   text        NOT NULL,
        state         text        NOT NULL,
        total         integer     NOT NULL CHECK (total >= 0),
        processed     integer     NOT NULL DEFAULT 0,
        successful    integer     NOT NULL DEFAULT 0,
        failed        integer     NOT NULL DEFAULT 0,
        duplicates    integer     NOT NULL DEFAULT 0,
        created_at    timestamptz NOT NULL,
        completed_at  timestamptz,
        submitted_by  text        NOT NULL,
        last_seq      integer     NOT NULL DEFAULT 0,
        PRIMARY KEY (client, batch_id)
    );
    CREATE INDEX batches_history ON batches (client, created_at DESC, batch_id);

    -- One row per submitted item; `detail` is the item's report entry (SPEC §4) as last known.
    CREATE TABLE items (
        client          text        NOT NULL,
        batch_id        text        NOT NULL,
        idx             integer     NOT NULL CHECK (idx >= 0),
        external_id     text        NOT NULL,
        user_id         text        NOT NULL,
        amount_cents    bigint      NOT NULL CHECK (amount_cents >= 1),
        pix_key_masked  text        NOT NULL,
        terms           text        NOT NULL,
        status          text        NOT NULL
            CHECK (status IN ('pending', 'processing', 'paid', 'failed', 'duplicate')),
        attempts        integer     NOT NULL DEFAULT 0,
        e2e_id          text,
        failure_code    text,
        claim_generation integer,
        detail          jsonb       NOT NULL,
        last_seq        integer     NOT NULL DEFAULT 0,
        updated_at      timestamptz NOT NULL,
        PRIMARY KEY (client, batch_id, idx),
        FOREIGN KEY (client, batch_id) REFERENCES batches ON DELETE CASCADE
    );
    -- SPEC §5 in the ledger's own words: an external_id is paid at most once per client.
    CREATE UNIQUE INDEX items_paid_once ON items (client, external_id) WHERE status = 'paid';
    CREATE INDEX items_by_external_id ON items (client, external_id);
    CREATE INDEX items_by_day ON items (client, updated_at) WHERE status IN ('paid', 'failed', 'duplicate');

    -- Append-only: every state change of an item (idx >= 0) or of its batch (idx = -1), in the
    -- batch's own sequence; the key makes a replayed outbox entry a no-op.
    CREATE TABLE events (
        client      text        NOT NULL,
        batch_id    text        NOT NULL,
        seq         integer     NOT NULL,
        idx         integer     NOT NULL CHECK (idx >= -1),
        type        text        NOT NULL,
        at          timestamptz NOT NULL,
        attempt     integer,
        code        text,
        detail      jsonb       NOT NULL DEFAULT '{}',
        PRIMARY KEY (client, batch_id, seq, idx),
        FOREIGN KEY (client, batch_id) REFERENCES batches ON DELETE CASCADE
    );
    CREATE INDEX events_of_item ON events (client, batch_id, idx, seq);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE events; DROP TABLE items; DROP TABLE batches;")
