-- Money going out: refunds, chargebacks and debits leave the balance through the ledger, and an
-- order remembers how much of it went back.
--
-- The column CHECKs of the first migration have no names of their own. MariaDB keeps them with
-- their column, and redefining the column drops them; MySQL makes them table constraints named
-- `<table>_chk_<n>`, found here by what they say and dropped by name.

ALTER TABLE orders
    MODIFY status VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
SET @drop_status_check = COALESCE((SELECT CONCAT('ALTER TABLE orders DROP CONSTRAINT `',
        CONSTRAINT_NAME, '`') FROM information_schema.CHECK_CONSTRAINTS
    WHERE CONSTRAINT_SCHEMA = DATABASE() AND CHECK_CLAUSE LIKE '%closed%' LIMIT 1), 'DO 0');
PREPARE drop_status_check FROM @drop_status_check;
EXECUTE drop_status_check;
DEALLOCATE PREPARE drop_status_check;

ALTER TABLE orders
    ADD CONSTRAINT orders_status_check
        CHECK (status IN ('pending', 'paid', 'refunded', 'closed')),
    -- Refunds so far, and chargebacks not reversed; both at most the amount together.
    ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN disputed_minor BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_gone_back_check CHECK (refunded_minor >= 0 AND disputed_minor >= 0
        AND refunded_minor + disputed_minor <= amount_minor);

ALTER TABLE ledger
    MODIFY kind VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
SET @drop_kind_check = COALESCE((SELECT CONCAT('ALTER TABLE ledger DROP CONSTRAINT `',
        CONSTRAINT_NAME, '`') FROM information_schema.CHECK_CONSTRAINTS
    WHERE CONSTRAINT_SCHEMA = DATABASE() AND CHECK_CLAUSE LIKE '%credit%' LIMIT 1), 'DO 0');
PREPARE drop_kind_check FROM @drop_kind_check;
EXECUTE drop_kind_check;
DEALLOCATE PREPARE drop_kind_check;

ALTER TABLE ledger
    ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('credit', 'refund', 'chargeback',
        'chargeback_reversal', 'debit', 'manual_credit')),
    -- The order a credit, refund or chargeback belongs to; NULL for a debit.
    MODIFY order_no VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    -- What makes the row unique within its kind: the order for a credit, the order and the
    -- provider's refund or dispute id (or the cumulative amount reached) for money going back,
    -- the caller's debit_no for a debit.
    ADD COLUMN entry_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    ADD COLUMN debit_no VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN memo TEXT NULL,
    ADD CONSTRAINT ledger_debit_check CHECK ((kind = 'debit') = (debit_no IS NOT NULL)
        AND (kind = 'debit') = (order_no IS NULL)),
    ADD KEY ledger_by_order (order_no);
UPDATE ledger SET entry_key = order_no;
-- The database itself refuses a second credit for one order, a second row for one refund or
-- dispute, and a second debit under one debit_no.
ALTER TABLE ledger
    DROP KEY ledger_order_kind,
    ADD UNIQUE KEY ledger_kind_key (kind, entry_key),
    ALTER COLUMN entry_key DROP DEFAULT;

-- A notification kept for a human: a mismatch, another trade, a payment after close, a refund
-- that is too large or leaves a debt.
ALTER TABLE notifications ADD COLUMN anomaly BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE notifications SET anomaly = TRUE WHERE outcome IN ('mismatch', 'paid_by_other_trade');
