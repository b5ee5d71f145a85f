//! What the crediting transaction decided for one notification, before its inbox row is
//! written.

use super::error::CreditError;
use crate::books::inbox::InboxRow;
use crate::domain::outcome::Outcome;

/// The outcome of one notification, why, and what its write produced.
pub(super) struct Decision {
    pub(super) outcome: Outcome,
    pub(super) detail: Option<String>,
    /// Kept for a human whatever the outcome.
    pub(super) anomaly: bool,
    pub(super) balance_after: Option<i64>,
    /// The inbox row, when the statement that credited also recorded the delivery.
    pub(super) recorded: Option<InboxRow>,
}

impl Decision {
    pub(super) fn new(outcome: Outcome, detail: Option<String>) -> Decision {
        Decision {
            outcome,
            detail,
            anomaly: false,
            balance_after: None,
            recorded: None,
        }
    }

    /// An outcome with the reason a human reads in the inbox.
    pub(super) fn because(
        outcome: Outcome,
        why: impl Into<String>,
    ) -> Result<Decision, CreditError> {
        Ok(Decision::new(outcome, Some(why.into())))
    }

    /// An outcome kept for a human, with the reason they read.
    pub(super) fn for_a_human(
        outcome: Outcome,
        why: impl Into<String>,
    ) -> Result<Decision, CreditError> {
        let mut decision = Decision::new(outcome, Some(why.into()));
        decision.anomaly = true;
        Ok(decision)
    }

    /// The same decision, kept for a human for this reason.
    pub(super) fn for_a_human_because(mut self, why: String) -> Decision {
        self.anomaly = true;
        self.detail = Some(why);
        self
    }

    /// Money moved: the new balance goes to the caller.
    pub(super) fn moved(outcome: Outcome, balance_after: i64) -> Decision {
        let mut decision = Decision::new(outcome, None);
        decision.balance_after = Some(balance_after);
        decision
    }
}
