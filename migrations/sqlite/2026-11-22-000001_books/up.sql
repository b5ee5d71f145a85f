-- The books: accounts, recharge orders, the ledger of every balance change, and the inbox of
-- every notification received. Money is integer minor units; times are UTC.

CREATE TABLE accounts (
    user_id       TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    balance_minor BIGINT  NOT NULL DEFAULT 0,
    version       BIGINT  NOT NULL DEFAULT 0,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (user_id, currency)
);

CREATE TABLE orders (
    order_no          TEXT    NOT NULL PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    amount_minor      BIGINT  NOT NULL CHECK (amount_minor > 0),
    currency          TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'closed')),
    provider_trade_no TEXT,
    version           BIGINT  NOT NULL DEFAULT 0,
    created_at        TIMESTAMP NOT NULL,
    paid_at           TIMESTAMP,
    closed_at         TIMESTAMP,
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency)
);
-- One provider trade pays at most one order.
CREATE UNIQUE INDEX orders_channel_trade_no ON orders (channel, provider_trade_no)
    WHERE provider_trade_no IS NOT NULL;
CREATE INDEX orders_user ON orders (user_id);

CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    order_no      TEXT    NOT NULL REFERENCES orders (order_no),
    kind          TEXT    NOT NULL CHECK (kind IN ('credit')),
    amount_minor  BIGINT  NOT NULL,
    balance_after BIGINT  NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency)
);
-- The database itself refuses a second credit for one order.
CREATE UNIQUE INDEX ledger_order_kind ON ledger (order_no, kind);
CREATE INDEX ledger_account ON ledger (user_id, currency, id);

CREATE TABLE notifications (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    channel           TEXT    NOT NULL,
    notification_id   TEXT    NOT NULL,
    order_no          TEXT,
    provider_trade_no TEXT,
    kind              TEXT    NOT NULL,
    amount_minor      BIGINT,
    currency          TEXT,
    verified          BOOLEAN NOT NULL,
    verify_error      TEXT,
    outcome           TEXT    NOT NULL,
    detail            TEXT,
    raw_headers       TEXT    NOT NULL,
    raw_body          BLOB    NOT NULL,
    delivery_count    BIGINT  NOT NULL DEFAULT 1,
    first_seen_at     TIMESTAMP NOT NULL,
    last_seen_at      TIMESTAMP NOT NULL,
    UNIQUE (channel, notification_id)
);
CREATE INDEX notifications_order ON notifications (order_no);
