-- Money going out: refunds, chargebacks and debits leave the balance through the ledger, and an
-- order remembers how much of it went back.

ALTER TABLE orders
    DROP CONSTRAINT orders_status_check,
    ADD CONSTRAINT orders_status_check
        CHECK (status IN ('pending', 'paid', 'refunded', 'closed')),
    -- Refunds so far, and chargebacks not reversed; both at most the amount together.
    ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    ADD COLUMN disputed_minor BIGINT NOT NULL DEFAULT 0 CHECK (disputed_minor >= 0),
    ADD CONSTRAINT orders_gone_back_check CHECK (refunded_minor + disputed_minor <= amount_minor);

ALTER TABLE ledger
    DROP CONSTRAINT ledger_kind_check,
    ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('credit', 'refund', 'chargeback',
        'chargeback_reversal', 'debit', 'manual_credit')),
    -- The order a credit, refund or chargeback belongs to; NULL for a debit.
    ALTER COLUMN order_no DROP NOT NULL,
    -- What makes the row unique within its kind: the order for a credit, the order and the
    -- provider's refund or dispute id (or the cumulative amount reached) for money going back,
    -- the caller's debit_no for a debit.
    ADD COLUMN entry_key TEXT,
    ADD COLUMN debit_no TEXT,
    ADD COLUMN memo TEXT,
    ADD CONSTRAINT ledger_debit_no_check CHECK ((kind = 'debit') = (debit_no IS NOT NULL)),
    ADD CONSTRAINT ledger_debit_order_check CHECK ((kind = 'debit') = (order_no IS NULL));
UPDATE ledger SET entry_key = order_no;
ALTER TABLE ledger ALTER COLUMN entry_key SET NOT NULL;
-- The database itself refuses a second credit for one order, a second row for one refund or
-- dispute, and a second debit under one debit_no.
DROP INDEX ledger_order_kind;
CREATE UNIQUE INDEX ledger_kind_key ON ledger (kind, entry_key);
CREATE INDEX ledger_by_order ON ledger (order_no);

-- A notification kept for a human: a mismatch, another trade, a payment after close, a refund
-- that is too large or leaves a debt.
ALTER TABLE notifications ADD COLUMN anomaly BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE notifications SET anomaly = TRUE WHERE outcome IN ('mismatch', 'paid_by_other_trade');
