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

const RULES: [Rule; 6] = [
    Rule {
        name: "every account's balance equals the sum of its ledger",
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
        name: "every paid order has exactly one credit of its amount",
        offending: "SELECT 'order ' || o.order_no || ': paid ' || o.amount_minor \
                 || ', ' || COALESCE(c.n, 0) || ' credit(s) totalling ' \
                 || COALESCE(c.total, 0) AS detail \
             FROM orders o LEFT JOIN \
                 (SELECT order_no, COUNT(*) AS n, SUM(amount_minor) AS total FROM ledger \
                  WHERE kind = 'credit' GROUP BY order_no) c ON c.order_no = o.order_no \
             WHERE o.status = 'paid' AND (COALESCE(c.n, 0) <> 1 OR c.total <> o.amount_minor)",
    },
    Rule {
        name: "no ledger entry lacks its order or credits another account",
        // A row without an order is a debit, and has its debit_no instead.
        offending: "SELECT 'ledger ' || l.id || ': ' \
                 || CASE WHEN l.order_no IS NULL THEN 'has neither an order nor a debit_no' \
                    WHEN o.order_no IS NULL THEN 'order ' || l.order_no || ' does not exist' \
                    ELSE 'order ' || l.order_no || ' belongs to ' || o.user_id || ' ' \
                        || o.currency END AS detail \
             FROM ledger l LEFT JOIN orders o ON o.order_no = l.order_no \
             WHERE (l.order_no IS NULL AND l.debit_no IS NULL) \
                OR (l.order_no IS NOT NULL AND (o.order_no IS NULL \
                    OR o.user_id <> l.user_id OR o.currency <> l.currency))",
    },
    Rule {
        name: "no pending or closed order has a credit",
        offending: "SELECT 'order ' || o.order_no || ' is ' || o.status || ' but ledger ' \
                 || l.id || ' credits it' AS detail \
             FROM ledger l JOIN orders o ON o.order_no = l.order_no \
             WHERE o.status <> 'paid'",
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
                 (SELECT 1 FROM ledger l WHERE l.order_no = n.order_no)",
    },
];

/// How many rows of each table the books hold.
const TOTALS: [(&str, &str); 7] = [
    ("accounts", "SELECT COUNT(*) AS n FROM accounts"),
    ("orders", "SELECT COUNT(*) AS n FROM orders"),
    (
        "paid orders",
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'paid'",
    ),
    (
        "closed orders",
        "SELECT COUNT(*) AS n FROM orders WHERE status = 'closed'",
    ),
    ("ledger entries", "SELECT COUNT(*) AS n FROM ledger"),
    ("notifications", "SELECT COUNT(*) AS n FROM notifications"),
    (
        "anomalies",
        "SELECT COUNT(*) AS n FROM notifications \
         WHERE outcome IN ('mismatch', 'paid_by_other_trade')",
    ),
];

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
                let examples = if violations == 0 {
                    Vec::new()
                } else {
                    diesel::sql_query(format!(
                        "SELECT detail FROM ({}) offending ORDER BY detail LIMIT {EXAMPLES}",
                        rule.offending
                    ))
                    .load::<Detail>(conn)?
                    .into_iter()
                    .map(|d| d.detail)
                    .collect()
                };
                Ok(CheckResult {
                    rule: rule.name,
                    violations,
                    examples,
                })
            })
            .collect::<Result<Vec<_>, diesel::result::Error>>()?;
        Ok::<_, diesel::result::Error>(Report { totals, checks })
    })?;
    Ok(report)
}
