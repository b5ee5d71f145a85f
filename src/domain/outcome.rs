//! What a delivery of a notification came to, and what the provider is told.

/// What one delivery of a notification came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// This delivery paid the order and credited the balance.
    Credited,
    /// The order was already paid by this same provider trade: a duplicate.
    AlreadyPaid,
    /// The order was already paid by a different provider trade: never credited, for a human.
    PaidByOtherTrade,
    /// A pending order was closed (or was closed already).
    Closed,
    /// Nothing to do: a refund, a non-final status, an event we do not act on.
    Ignored,
    /// Amount, currency, merchant or order state disagree: never credited, for a human.
    Mismatch,
    /// No such order yet; its own transaction may not have committed.
    UnknownOrder,
}

/// The two answers a provider can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Retry,
}

impl Outcome {
    pub fn answer(self) -> Answer {
        match self {
            Outcome::UnknownOrder => Answer::Retry,
            _ => Answer::Ack,
        }
    }

    /// True for outcomes a human should look at.
    pub fn is_anomaly(self) -> bool {
        matches!(self, Outcome::PaidByOtherTrade | Outcome::Mismatch)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Credited => "credited",
            Outcome::AlreadyPaid => "already_paid",
            Outcome::PaidByOtherTrade => "paid_by_other_trade",
            Outcome::Closed => "closed",
            Outcome::Ignored => "ignored",
            Outcome::Mismatch => "mismatch",
            Outcome::UnknownOrder => "unknown_order",
        }
    }
}
