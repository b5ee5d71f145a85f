"""The SQLite reference: payhook's crediting SQL for first-time paid notifications, run in one
process through the sqlite3 library with payhook's pragmas, one BEGIN IMMEDIATE transaction per
notification, for a fixed time. Prints one JSON object: transactions, seconds, latencies (ms).

usage: sqlite_reference.py DB_FILE SECONDS
The database must hold payhook's schema, accounts u0..u9999 and pending orders R1..RN.
"""

import json
import sqlite3
import sys
import time


def trade_no(n: int) -> str:
    """Order n's trade number. Multiplying by an odd constant modulo 2**32 maps 1..N to distinct
    numbers in no order, so that each lands anywhere in the orders' trade index, as a provider's
    ids do (and as payhook's fixtures' do)."""
    return f"T{n * 2654435761 % 2**32}"


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    now = "2026-11-22 10:00:00"
    latencies = []
    n = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        n += 1
        order, trade, nid, user = f"R{n}", trade_no(n), f"ref-{n}", f"u{n % 10000}"
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "SELECT o.order_no, o.user_id, o.channel, o.amount_minor, o.currency, o.status, "
            "o.provider_trade_no, o.version, o.created_at, o.paid_at, o.closed_at, n.id, "
            "n.delivery_count FROM orders o LEFT OUTER JOIN notifications n "
            "ON n.channel = 'bench' AND n.notification_id = ? "
            "WHERE o.order_no = ? OR (o.channel = 'bench' AND o.provider_trade_no = ?)",
            (nid, order, trade),
        ).fetchall()
        changed = db.execute(
            "UPDATE orders SET status = 'paid', provider_trade_no = ?, version = version + 1, "
            "paid_at = ? WHERE order_no = ? AND status = 'pending'",
            (trade, now, order),
        ).rowcount
        if changed != 1:
            raise SystemExit(f"order {order} was not pending: prepare more orders")
        balance = db.execute(
            "UPDATE accounts SET balance_minor = balance_minor + 1000, version = version + 1, "
            "updated_at = ? WHERE user_id = ? AND currency = 'CNY' "
            "AND balance_minor <= 9223372036854775807 - 1000 RETURNING balance_minor",
            (now, user),
        ).fetchall()[0][0]
        db.execute(
            "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, "
            "created_at, entry_key) VALUES (?, 'CNY', ?, 'credit', 1000, ?, ?, ?)",
            (user, order, balance, now, order),
        )
        db.execute(
            "INSERT INTO notifications (channel, notification_id, order_no, provider_trade_no, kind, "
            "amount_minor, currency, verified, outcome, detail, anomaly, source, raw_headers, raw_body, "
            "delivery_count, "
            "first_seen_at, last_seen_at) VALUES ('bench', ?, ?, ?, 'paid', 1000, 'CNY', TRUE, "
            "'credited', NULL, FALSE, 'notify', '{}', x'7b7d', 1, ?, ?) "
            "ON CONFLICT (channel, notification_id) DO UPDATE SET "
            "delivery_count = notifications.delivery_count + 1, last_seen_at = excluded.last_seen_at, "
            "outcome = CASE WHEN notifications.outcome = 'credited' THEN notifications.outcome "
            "ELSE excluded.outcome END, "
            "detail = CASE WHEN notifications.outcome = 'credited' THEN notifications.detail "
            "ELSE excluded.detail END RETURNING id, delivery_count",
            (nid, order, trade, now, now),
        ).fetchall()
        db.execute("COMMIT")
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({
        "transactions": n,
        "seconds": seconds,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }))


if __name__ == "__main__":
    main()
