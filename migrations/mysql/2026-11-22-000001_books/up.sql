-- The books: accounts, recharge orders, the ledger of every balance change, and the inbox of
-- every notification received. Money is integer minor units; times are UTC.
--
-- Identifiers compare by their bytes (binary collation): `A1` and `a1` are two orders, as on the
-- other backends. MySQL commits each CREATE at once, so a start killed halfway through this file
-- finds the tables it made and goes on. Indexed text is VARCHAR with a length, since InnoDB cannot index TEXT whole.

CREATE TABLE IF NOT EXISTS accounts (
    user_id       VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    currency      VARCHAR(8)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    balance_minor BIGINT      NOT NULL DEFAULT 0,
    version       BIGINT      NOT NULL DEFAULT 0,
    created_at    DATETIME(6) NOT NULL,
    updated_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, currency)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS orders (
    order_no          VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    user_id           VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    channel           VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    amount_minor      BIGINT       NOT NULL CHECK (amount_minor > 0),
    currency          VARCHAR(8)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status            VARCHAR(16)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
                      CHECK (status IN ('pending', 'paid', 'closed')),
    provider_trade_no VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    version           BIGINT       NOT NULL DEFAULT 0,
    created_at        DATETIME(6)  NOT NULL,
    paid_at           DATETIME(6),
    closed_at         DATETIME(6),
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency),
    -- One provider trade pays at most one order (a unique key admits many NULLs).
    UNIQUE KEY orders_channel_trade_no (channel, provider_trade_no),
    KEY orders_user (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS ledger (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id       VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    currency      VARCHAR(8)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    order_no      VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    kind          VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
                  CHECK (kind IN ('credit')),
    amount_minor  BIGINT       NOT NULL,
    balance_after BIGINT       NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    CONSTRAINT ledger_order FOREIGN KEY (order_no) REFERENCES orders (order_no),
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency),
    -- The database itself refuses a second credit for one order.
    UNIQUE KEY ledger_order_kind (order_no, kind),
    KEY ledger_account (user_id, currency, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS notifications (
    id                BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    channel           VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    notification_id   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    order_no          VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    provider_trade_no VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    kind              VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    amount_minor      BIGINT,
    currency          VARCHAR(8)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    verified          BOOLEAN      NOT NULL,
    verify_error      TEXT,
    outcome           VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    detail            TEXT,
    raw_headers       TEXT         NOT NULL,
    raw_body          LONGBLOB     NOT NULL,
    delivery_count    BIGINT       NOT NULL DEFAULT 1,
    first_seen_at     DATETIME(6)  NOT NULL,
    last_seen_at      DATETIME(6)  NOT NULL,
    UNIQUE KEY notifications_channel_id (channel, notification_id),
    KEY notifications_order (order_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
