//! `payhook verify`: proves the books balance, in one read-only transaction.
//!
//! Each check is one set-based query that returns the offending rows, described in words, so it
//! stays fast on millions of orders and its report points at the rows to look at.

use std::fmt;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::{self, DbConnection, DbError};

/// One rule of the books, and the query that lists the rows breaking it.
struct Rule {
    name: &'static str,
    offending: &'static str,
}

const RULES: [Rule; 15] = [
    Rule {
        name: "every account's balance equals the signed sum of its ledger",
        offending: "SELECT 'account ' || a.user_id || ' ' || a.currency || ': balance ' \
                 || a.balance_minor || ', ledger sum ' \
                 || COALESCE(l.total, 0) AS detail \
             FROM accounts a LEFT JOIN \
                 (SELECT user_id, currency, SUM(amount_minor) AS total FROM ledger \
                  GROUP BY user_id, currency) l \
                 ON l.user_id = a.user_id AND l.currency = a.currency \
             WHERE a.balance_minor <> COALESCE(l.total, 0)",
    },
    Rule {
        name: "every ledger amount has its kind's sign",
        offending: "SELECT 'ledger ' || id || ': ' || kind || ' of ' || amount_minor AS detail \
             FROM ledger \
             WHERE (kind IN ('credit', 'chargeback_reversal', 'manual_credit') \
                    AND amount_minor <= 0) \
                OR (kind IN ('refund', 'chargeback', 'debit') AND amount_minor >= 0)",
    },
    Rule {
        name: "every paid order has exactly one credit of its amount",
        offending: "SELECT 'order ' || o.order_no || ': paid ' || o.amount_minor \
                 || ', ' || COALESCE(c.n, 0) || ' credit(s) totalling ' \
                 || COALESCE(c.total, 0) AS detail \
             FROM orders o LEFT JOIN \
                 (SELECT order_no, COUNT(*) AS n, SUM(amount_minor) AS total FROM ledger \
                  WHERE kind = 'credit' GROUP BY order_no) c ON c.order_no = o.order_no \
             WHERE o.status IN ('paid', 'refunded') \
                 AND (COALESCE(c.n, 0) <> 1 OR c.total <> o.amount_minor)",
    },
    Rule {
        name: "no ledger entry lacks its order or moves another account's money, and only \
               debits have no order",
        offending: "SELECT 'ledger ' || l.id || ': ' || l.kind || ' ' \
                 || CASE WHEN l.order_no IS NULL THEN 'names no order' \
                    WHEN o.order_no IS NULL THEN 'names order ' || l.order_no \
                        || ', which does not exist' \
                    ELSE 'of order ' || l.order_no || ' belongs to ' || o.user_id || ' ' \
                        || o.currency END AS detail \
             FROM ledger l LEFT JOIN orders o ON o.order_no = l.order_no \
             WHERE (l.kind = 'debit' AND (l.order_no IS NOT NULL OR l.debit_no IS NULL)) \
                OR (l.kind <> 'debit' AND (l.order_no IS NULL OR o.order_no IS NULL \
                    OR o.user_id <> l.user_id OR o.currency <> l.currency))",
    },
    Rule {
        name: "no pending or closed order has a credit, refund or chargeback",
        offending: "SELECT 'order ' || o.order_no || ' is ' || o.status || ' but ledger ' \
                 || l.id || ' books a ' || l.kind || ' for it' AS detail \
             FROM ledger l JOIN orders o ON o.order_no = l.order_no \
             WHERE o.status NOT IN ('paid', 'refunded') \
                 AND l.kind IN ('credit', 'refund', 'chargeback', 'chargeback_reversal')",
    },
    Rule {
        name: "refunds and chargebacks of an order never exceed what it paid, and the order \
               knows what went back",
        offending: "SELECT 'order ' || o.order_no || ': paid ' || o.amount_minor \
                 || ', refunds ' || COALESCE(g.refunded, 0) \
                 || ', chargebacks net ' || COALESCE(g.disputed, 0) \
                 || '; the order says ' || o.refunded_minor || ' and ' || o.disputed_minor \
                 || ', status ' || o.status AS detail \
             FROM orders o LEFT JOIN \
                 (SELECT order_no, \
                     -SUM(CASE WHEN kind = 'refund' THEN amount_minor ELSE 0 END) AS refunded, \
                     -SUM(CASE WHEN kind IN ('chargeback', 'chargeback_reversal') \
                         THEN amount_minor ELSE 0 END) AS disputed \
                  FROM ledger WHERE kind IN ('refund', 'chargeback', 'chargeback_reversal') \
                  GROUP BY order_no) g ON g.order_no = o.order_no \
             WHERE COALESCE(g.refunded, 0) + COALESCE(g.disputed, 0) > o.amount_minor \
                OR COALESCE(g.disputed, 0) < 0 \
                OR o.refunded_minor <> COALESCE(g.refunded, 0) \
                OR o.disputed_minor <> COALESCE(g.disputed, 0) \
                OR (o.status = 'refunded') <> \
                   (o.refunded_minor + o.disputed_minor = o.amount_minor)",
    },
    Rule {
        name: "every chargeback reversal has its chargeback and returns no more than it took",
        offending: "SELECT 'ledger ' || r.id || ': reversal ' || r.entry_key || ' of ' \
                 || r.amount_minor || CASE WHEN c.id IS NULL THEN ' has no chargeback' \
                    ELSE ' is more than its chargeback of ' || c.amount_minor END AS detail \
             FROM ledger r LEFT JOIN ledger c \
                 ON c.kind = 'chargeback' AND c.entry_key = r.entry_key \
             WHERE r.kind = 'chargeback_reversal' \
                 AND (c.id IS NULL OR r.amount_minor > -c.amount_minor)",
    },
    Rule {
        name: "one ledger row per credit, refund, dispute and debit_no",
        offending: "SELECT kind || ' ' || entry_key || ': ' || COUNT(*) || ' rows' AS detail \
             FROM ledger GROUP BY kind, entry_key HAVING COUNT(*) > 1 \
             UNION ALL \
             SELECT 'debit_no ' || debit_no || ': ' || COUNT(*) || ' rows' AS detail \
             FROM ledger WHERE debit_no IS NOT NULL GROUP BY debit_no HAVING COUNT(*) > 1",
    },
    Rule {
        name: "every credit has exactly one crediting notification",
        offending: "SELECT 'order ' || l.order_no || ': credited, but ' \
                 || COUNT(n.id) || ' notification(s) say credited' AS detail \
             FROM ledger l LEFT JOIN notifications n \
                 ON n.order_no = l.order_no AND n.outcome = 'credited' \
             WHERE l.kind = 'credit' \
             GROUP BY l.order_no HAVING COUNT(n.id) <> 1",
    },
    Rule {
        name: "every notification that says credited has its credit",
        offending: "SELECT 'notification ' || n.channel || '/' || n.notification_id \
                 || ': says credited, but order ' || COALESCE(n.order_no, '(none)') \
                 || ' has no credit' AS detail \
             FROM notifications n \
             WHERE n.outcome = 'credited' AND NOT EXISTS \
                 (SELECT 1 FROM ledger l WHERE l.order_no = n.order_no AND l.kind = 'credit')",
    },
    Rule {
        name: "every notification that says money went back has its ledger row",
        offending: "SELECT 'notification ' || n.channel || '/' || n.notification_id \
                 || ': says ' || n.outcome || ', but order ' || COALESCE(n.order_no, '(none)') \
                 || ' has no such row' AS detail \
             FROM notifications n \
             WHERE n.outcome IN ('refunded', 'charged_back', 'chargeback_reversed') \
                 AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.order_no = n.order_no \
                     AND l.kind = CASE n.outcome WHEN 'refunded' THEN 'refund' \
                         WHEN 'charged_back' THEN 'chargeback' \
                         ELSE 'chargeback_reversal' END)",
    },
    Rule {
        name: "every refund, chargeback and reversal has a notification that says so",
        offending: "SELECT 'order ' || l.order_no || ': ' || l.kind || ' ' || l.entry_key \
                 || ' has no notification that says so' AS detail \
             FROM ledger l \
             WHERE l.kind IN ('refund', 'chargeback', 'chargeback_reversal') \
                 AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.order_no = l.order_no \
                     AND n.outcome = CASE l.kind WHEN 'refund' THEN 'refunded' \
                         WHEN 'chargeback' THEN 'charged_back' \
                         ELSE 'chargeback_reversed' END)",
    },
    Rule {
        name: "every manual credit is an anomaly of its order resolved as credited by hand, for \
               the order's amount",
        offending: "SELECT 'ledger ' || l.id || ': manual credit ' || l.entry_key || ' of ' \
                 || l.amount_minor || CASE WHEN n.id IS NULL THEN ' has no notification' \
                    WHEN n.anomaly <> TRUE THEN ' resolves no anomaly' \
                    WHEN n.resolution IS NULL OR n.resolution <> 'credited' \
                        THEN ' belongs to a notification not resolved as credited' \
                    WHEN n.order_no IS NULL OR n.order_no <> l.order_no \
                        THEN ' is for another order than its notification' \
                    ELSE ' is not the order amount ' || o.amount_minor END AS detail \
             FROM ledger l \
                 LEFT JOIN notifications n ON l.entry_key = 'notification:' || n.id \
                 LEFT JOIN orders o ON o.order_no = l.order_no \
             WHERE l.kind = 'manual_credit' \
                 AND (n.id IS NULL OR n.anomaly <> TRUE OR n.resolution IS NULL \
                     OR n.resolution <> 'credited' OR n.order_no IS NULL \
                     OR n.order_no <> l.order_no OR o.amount_minor IS NULL \
                     OR o.amount_minor <> l.amount_minor)",
    },
    Rule {
        name: "no order is credited twice, automatically or by hand",
        offending: "SELECT 'order ' || order_no || ': ' || COUNT(*) \
                 || ' credits and manual credits' AS detail \
             FROM ledger WHERE kind IN ('credit', 'manual_credit') \
             GROUP BY order_no HAVING COUNT(*) > 1",
    },
    Rule {
        name: "every anomaly resolved as credited by hand has its manual credit",
        offending: "SELECT 'notification ' || n.id || ' (' || n.channel || '/' \
                 || n.notification_id || '): resolved as credited, but no manual credit ' \
                 || 'is booked for it' AS detail \
             FROM notifications n \
             WHERE n.resolution = 'credited' AND NOT EXISTS (SELECT 1 FROM ledger l \
                 WHERE l.kind = 'manual_credit' AND l.entry_key = 'notification:' || n.id)",
    },
];

/// How many rows of each table the books hold.
const TOTALS: [(&str, &str); 13] = [
    ("accounts", "SELECT COUNT(*) AS n FROM accounts"),
    ("orders", "SELECT COUNT(*) AS n FROM orders"),
    (
        "paid orders",
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'paid'",
    ),
    (
        "refunded orders",
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'refunded'",
    ),
    (
        "closed orders",
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'closed'",
    ),
    ("ledger entries", "SELECT COUNT(*) AS n FROM ledger"),
    (
        "refunds",
        "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'refund'",
    ),
    (
        "chargebacks",
        "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'chargeback'",
    ),
    (
        "debits",
        "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'debit'",
    ),
    ("notifications", "SELECT COUNT(*) AS n FROM notifications"),
    (
        "anomalies",
        "SELECT COUNT(*) AS n FROM notifications WHERE anomaly = TRUE",
    ),
    (
        "anomalies open",
        "SELECT COUNT(*) AS n FROM notifications WHERE anomaly = TRUE AND resolution IS NULL",
    ),
    (
        "manual credits",
        "SELECT COUNT(*) AS n FROM ledger WHERE kind = 'manual_credit'",
    ),
];

/// Accounts that owe money: a refund or chargeback took a credit the user had spent. A report
/// for a human, not a broken rule.
const DEBTS: &str = "SELECT 'account ' || user_id || ' ' || currency || ' owes ' \
         || -balance_minor AS detail \
     FROM accounts WHERE balance_minor < 0";

/// How many offending rows a report names per rule.
const EXAMPLES: i64 = 5;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Detail {
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub rule: &'static str,
    pub violations: i64,
    /// The first offending rows, in words.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub totals: Vec<(&'static str, i64)>,
    pub checks: Vec<CheckResult>,
    /// How many accounts owe money, and the first of them in words.
    pub debts: i64,
    pub debt_examples: Vec<String>,
}

impl Report {
    /// True when every rule holds.
    pub fn balanced(&self) -> bool {
        self.checks.iter().all(|c| c.violations == 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let totals: Vec<String> = self
            .totals
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        writeln!(f, "books: {}", totals.join(", "))?;
        for check in &self.checks {
            if check.violations == 0 {
                writeln!(f, "ok    {}", check.rule)?;
            } else {
                writeln!(f, "FAIL  {} ({} row(s))", check.rule, check.violations)?;
                for example in &check.examples {
                    writeln!(f, "        {example}")?;
                }
            }
        }
        if self.debts > 0 {
            writeln!(
                f,
                "debts: {} account(s) owe money (in minor units); a refund or chargeback took a \
                 spent credit",
                self.debts
            )?;
            for example in &self.debt_examples {
                writeln!(f, "        {example}")?;
            }
        }
        let failed = self.checks.iter().filter(|c| c.violations > 0).count();
        if failed == 0 {
            write!(f, "the books balance")
        } else {
            write!(f, "the books do NOT balance: {failed} rule(s) broken")
        }
    }
}

fn count(conn: &mut DbConnection, sql: &str) -> Result<i64, diesel::result::Error> {
    Ok(diesel::sql_query(sql)
        .load::<Count>(conn)?
        .first()
        .map_or(0, |c| c.n))
}

/// The first rows of `offending`, in words, when there are any.
fn examples(
    conn: &mut DbConnection,
    offending: &str,
    found: i64,
) -> Result<Vec<String>, diesel::result::Error> {
    if found == 0 {
        return Ok(Vec::new());
    }
    Ok(diesel::sql_query(format!(
        "SELECT detail FROM ({offending}) offending ORDER BY detail LIMIT {EXAMPLES}"
    ))
    .load::<Detail>(conn)?
    .into_iter()
    .map(|d| d.detail)
    .collect())
}

/// Runs every check in one read-only transaction, so the report sees one state of the books.
pub fn verify(conn: &mut DbConnection) -> Result<Report, DbError> {
    let report = db::read_transaction(conn, |conn| {
        let totals = TOTALS
            .iter()
            .map(|(what, sql)| Ok((*what, count(conn, sql)?)))
            .collect::<Result<Vec<_>, diesel::result::Error>>()?;
        let checks = RULES
            .iter()
            .map(|rule| {
                let violations = count(
                    conn,
                    &format!("SELECT COUNT(*) AS n FROM ({}) offending", rule.offending),
                )?;
                let examples = examples(conn, rule.offending, violations)?;
                Ok(CheckResult {
                    rule: rule.name,
                    violations,
                    examples,
                })
            })
            .collect::<Result<Vec<_>, diesel::result::Error>>()?;
        let debts = count(conn, &format!("SELECT COUNT(*) AS n FROM ({DEBTS}) debts"))?;
        let debt_examples = examples(conn, DEBTS, debts)?;
        Ok::<_, diesel::result::Error>(Report {
            totals,
            checks,
            debts,
            debt_examples,
        })
    })?;
    Ok(report)
}
