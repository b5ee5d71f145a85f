-- Money going out: refunds, chargebacks and debits leave the balance through the ledger, and an
-- order remembers how much of it went back.
--
-- MySQL commits each ALTER on its own, so an instance stopped half-way leaves some done. Every
-- step here is therefore either harmless to run again or skipped when information_schema shows
-- it done, and the next start finishes the migration.
--
-- The column CHECKs of the first migration have no names of their own. MariaDB keeps them with
-- their column, and redefining the column drops them; MySQL makes them table constraints named
-- `<table>_chk_<n>`, found here by what they say and dropped by name.

ALTER TABLE orders
    MODIFY status VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
SET @step = COALESCE((SELECT CONCAT('ALTER TABLE orders DROP CONSTRAINT `', CONSTRAINT_NAME, '`')
    FROM information_schema.CHECK_CONSTRAINTS
    WHERE CONSTRAINT_SCHEMA = DATABASE() AND CHECK_CLAUSE LIKE '%closed%'
        AND CONSTRAINT_NAME NOT IN ('orders_status_check', 'orders_gone_back_check')
    LIMIT 1), 'DO 0');
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'orders' AND COLUMN_NAME = 'refunded_minor'), 'DO 0',
    "ALTER TABLE orders
        ADD CONSTRAINT orders_status_check
            CHECK (status IN ('pending', 'paid', 'refunded', 'closed')),
        ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN disputed_minor BIGINT NOT NULL DEFAULT 0,
        ADD CONSTRAINT orders_gone_back_check CHECK (refunded_minor >= 0 AND disputed_minor >= 0
            AND refunded_minor + disputed_minor <= amount_minor)");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

ALTER TABLE ledger
    MODIFY kind VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
SET @step = COALESCE((SELECT CONCAT('ALTER TABLE ledger DROP CONSTRAINT `', CONSTRAINT_NAME, '`')
    FROM information_schema.CHECK_CONSTRAINTS
    WHERE CONSTRAINT_SCHEMA = DATABASE() AND CHECK_CLAUSE LIKE '%credit%'
        AND CONSTRAINT_NAME NOT IN ('ledger_kind_check', 'ledger_debit_check',
            'notifications_resolution_check')
    LIMIT 1), 'DO 0');
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

-- A ledger row's order (NULL for a debit); what makes it unique within its kind (the order for a
-- credit, the order and the provider's refund or dispute id, or the cumulative amount reached,
-- for money going back, the caller's debit_no for a debit); a debit's debit_no and memo.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'ledger' AND COLUMN_NAME = 'entry_key'), 'DO 0',
    "ALTER TABLE ledger
        ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('credit', 'refund', 'chargeback',
            'chargeback_reversal', 'debit', 'manual_credit')),
        MODIFY order_no VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
        ADD COLUMN entry_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
            DEFAULT '',
        ADD COLUMN debit_no VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
        ADD COLUMN memo TEXT NULL,
        ADD CONSTRAINT ledger_debit_check CHECK ((kind = 'debit') = (debit_no IS NOT NULL)
            AND (kind = 'debit') = (order_no IS NULL)),
        ADD KEY ledger_by_order (order_no)");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;
UPDATE ledger SET entry_key = order_no WHERE entry_key = '' AND kind = 'credit';

-- The database itself refuses a second credit for one order, a second row for one refund or
-- dispute, and a second debit under one debit_no.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'ledger' AND INDEX_NAME = 'ledger_kind_key'), 'DO 0',
    "ALTER TABLE ledger
        DROP KEY ledger_order_kind,
        ADD UNIQUE KEY ledger_kind_key (kind, entry_key),
        ALTER COLUMN entry_key DROP DEFAULT");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;

-- A notification kept for a human: a mismatch, another trade, a payment after close, a refund
-- that is too large or leaves a debt.
SET @step = IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = 'notifications' AND COLUMN_NAME = 'anomaly'), 'DO 0',
    "ALTER TABLE notifications ADD COLUMN anomaly BOOLEAN NOT NULL DEFAULT FALSE");
PREPARE step FROM @step;
EXECUTE step;
DEALLOCATE PREPARE step;
UPDATE notifications SET anomaly = TRUE WHERE outcome IN ('mismatch', 'paid_by_other_trade');
