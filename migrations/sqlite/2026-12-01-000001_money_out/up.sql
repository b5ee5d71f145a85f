-- Money going out: refunds, chargebacks and debits leave the balance through the ledger, and an
-- order remembers how much of it went back.
--
-- SQLite cannot change a CHECK or a NOT NULL in place, so `orders` and `ledger` are rebuilt and
-- their rows copied. `payhook migrate` turns foreign-key enforcement off while a migration runs
-- and checks every key afterwards, as SQLite's documentation prescribes for rebuilds.

CREATE TABLE orders_rebuilt (
    order_no          TEXT    NOT NULL PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    amount_minor      BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency          TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'refunded', 'closed')),
    provider_trade_no TEXT,
    version           BIGINT  NOT NULL DEFAULT 0,
    created_at        TIMESTAMP NOT NULL,
    paid_at           TIMESTAMP,
    closed_at         TIMESTAMP,
    -- Refunds so far, and chargebacks not reversed; both at most the amount together.
    refunded_minor    BIGINT  NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    disputed_minor    BIGINT  NOT NULL DEFAULT 0 CHECK (disputed_minor >= 0),
    CHECK (refunded_minor + disputed_minor <= amount_minor),
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency)
);
INSERT INTO orders_rebuilt (order_no, user_id, channel, amount_minor, currency, status,
        provider_trade_no, version, created_at, paid_at, closed_at)
    SELECT order_no, user_id, channel, amount_minor, currency, status,
        provider_trade_no, version, created_at, paid_at, closed_at
    FROM orders;
DROP TABLE orders;
ALTER TABLE orders_rebuilt RENAME TO orders;
CREATE UNIQUE INDEX orders_channel_trade_no ON orders (channel, provider_trade_no)
    WHERE provider_trade_no IS NOT NULL;
CREATE INDEX orders_user ON orders (user_id);

CREATE TABLE ledger_rebuilt (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    -- The order a credit, refund or chargeback belongs to; NULL for a debit.
    order_no      TEXT    REFERENCES orders (order_no),
    kind          TEXT    NOT NULL CHECK (kind IN ('credit', 'refund', 'chargeback',
                      'chargeback_reversal', 'debit', 'manual_credit')),
    -- Signed: negative for money going out.
    amount_minor  BIGINT  NOT NULL,
    balance_after BIGINT  NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    -- What makes the row unique within its kind: the order for a credit, the order and the
    -- provider's refund or dispute id (or the cumulative amount reached) for money going back,
    -- the caller's debit_no for a debit.
    entry_key     TEXT    NOT NULL,
    debit_no      TEXT,
    memo          TEXT,
    CHECK ((kind = 'debit') = (debit_no IS NOT NULL)),
    CHECK ((kind = 'debit') = (order_no IS NULL)),
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency)
);
INSERT INTO ledger_rebuilt (id, user_id, currency, order_no, kind, amount_minor, balance_after,
        created_at, entry_key)
    SELECT id, user_id, currency, order_no, kind, amount_minor, balance_after, created_at, order_no
    FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_rebuilt RENAME TO ledger;
-- The database itself refuses a second credit for one order, a second row for one refund or
-- dispute, and a second debit under one debit_no.
CREATE UNIQUE INDEX ledger_kind_key ON ledger (kind, entry_key);
CREATE INDEX ledger_account ON ledger (user_id, currency, id);
CREATE INDEX ledger_by_order ON ledger (order_no);

-- A notification kept for a human: a mismatch, another trade, a payment after close, a refund
-- that is too large or leaves a debt.
ALTER TABLE notifications ADD COLUMN anomaly BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE notifications SET anomaly = TRUE WHERE outcome IN ('mismatch', 'paid_by_other_trade');
