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
    /// A refund left the balance.
    Refunded,
    /// A chargeback left the balance.
    ChargedBack,
    /// A reversed chargeback came back to the balance.
    ChargebackReversed,
    /// This refund, chargeback or reversal is booked already: a duplicate, or a cumulative
    /// refund total that was already passed.
    AlreadyBooked,
    /// What it depends on has not arrived: a refund before its payment, a reversal before its
    /// chargeback. Answered "retry", so that the provider sends it again after.
    NotYet,
    /// Nothing to do: a non-final status, an event we do not act on.
    Ignored,
    /// Amount, currency, merchant or order state disagree: nothing moved, for a human.
    Mismatch,
    /// No such order yet; its own transaction may not have committed.
    UnknownOrder,
}

/// How the inbox's `detail` of a notification addressed to another merchant or app begins: such
/// a payment is never ours to credit, not even by hand.
pub const ANOTHER_MERCHANT: &str = "addressed to another merchant: ";

/// The two answers a provider can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Retry,
}

impl Outcome {
    pub fn answer(self) -> Answer {
        match self {
            Outcome::UnknownOrder | Outcome::NotYet => Answer::Retry,
            _ => Answer::Ack,
        }
    }

    /// True for outcomes that are always for a human. Others may be too, for their own reason
    /// (a refund that leaves a debt): the inbox row's `anomaly` says so.
    pub fn is_anomaly(self) -> bool {
        matches!(self, Outcome::PaidByOtherTrade | Outcome::Mismatch)
    }

    /// True for the outcomes that moved money. A notification's row keeps such an outcome
    /// whatever its later deliveries come to.
    pub fn moved_money(self) -> bool {
        matches!(
            self,
            Outcome::Credited
                | Outcome::Refunded
                | Outcome::ChargedBack
                | Outcome::ChargebackReversed
        )
    }

    pub const MOVED_MONEY: [Outcome; 4] = [
        Outcome::Credited,
        Outcome::Refunded,
        Outcome::ChargedBack,
        Outcome::ChargebackReversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Credited => "credited",
            Outcome::AlreadyPaid => "already_paid",
            Outcome::PaidByOtherTrade => "paid_by_other_trade",
            Outcome::Closed => "closed",
            Outcome::Refunded => "refunded",
            Outcome::ChargedBack => "charged_back",
            Outcome::ChargebackReversed => "chargeback_reversed",
            Outcome::AlreadyBooked => "already_booked",
            Outcome::NotYet => "not_yet",
            Outcome::Ignored => "ignored",
            Outcome::Mismatch => "mismatch",
            Outcome::UnknownOrder => "unknown_order",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcomes_that_moved_money_are_listed_once() {
        let listed: Vec<Outcome> = Outcome::MOVED_MONEY.to_vec();
        for outcome in listed.iter() {
            assert!(outcome.moved_money(), "{outcome:?}");
            assert_eq!(outcome.answer(), Answer::Ack);
        }
        assert!(!Outcome::AlreadyBooked.moved_money());
        assert_eq!(Outcome::NotYet.answer(), Answer::Retry);
    }
}
