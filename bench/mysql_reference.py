"""The MySQL/MariaDB reference: payhook's crediting SQL for first-time paid notifications, one
transaction per notification, run by CLIENTS processes at once (as pgbench runs clients) for a
fixed time. Prints one JSON object: transactions, seconds, latencies (ms).

usage: mysql_reference.py HOST PORT DATABASE CLIENTS SECONDS
The database must hold payhook's schema, accounts u0..u9999 and pending orders R1..RN, N at least
CLIENTS * 100000. Needs PyMySQL (pip install pymysql).
"""

import json
import multiprocessing
import sys
import time

import pymysql

NOW = "2026-11-22 10:00:00"


def trade_no(n: int) -> str:
    """Order n's trade number. Multiplying by an odd constant modulo 2**32 maps 1..N to distinct
    numbers in no order, so that each lands anywhere in the orders' trade index, as a provider's
    ids do (and as payhook's fixtures' do)."""
    return f"T{n * 2654435761 % 2**32}"


def client(args):
    host, port, database, index, clients, seconds = args
    db = pymysql.connect(host=host, port=port, user="root", database=database, autocommit=False)
    cur = db.cursor()
    cur.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,PIPES_AS_CONCAT'")
    latencies = []
    n = index + 1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        order, trade, nid, user = f"R{n}", trade_no(n), f"ref-{n}", f"u{n % 10000}"
        started = time.perf_counter()
        cur.execute("BEGIN")
        cur.execute(
            "SELECT o.user_id FROM orders o WHERE o.order_no IN (%s) ORDER BY o.order_no FOR UPDATE",
            (order,))
        cur.execute("SELECT user_id FROM accounts WHERE user_id IN (%s) ORDER BY user_id, currency "
                    "FOR UPDATE", (user,))
        cur.execute(
            "SELECT o.order_no, o.user_id, o.channel, o.amount_minor, o.currency, o.status, "
            "o.provider_trade_no, o.version, o.created_at, o.paid_at, o.closed_at, n.id, "
            "n.delivery_count FROM orders o LEFT OUTER JOIN notifications n "
            "ON n.channel = 'bench' AND n.notification_id = %s "
            "WHERE o.order_no = %s OR (o.channel = 'bench' AND o.provider_trade_no = %s)",
            (nid, order, trade))
        cur.fetchall()
        changed = cur.execute(
            "UPDATE orders SET status = 'paid', provider_trade_no = %s, version = version + 1, "
            "paid_at = %s WHERE order_no = %s AND status = 'pending'", (trade, NOW, order))
        if changed != 1:
            raise SystemExit(f"order {order} was not pending: prepare more orders")
        cur.execute(
            "UPDATE accounts SET balance_minor = balance_minor + 1000, version = version + 1, "
            "updated_at = %s WHERE user_id = %s AND currency = 'CNY' "
            "AND balance_minor <= 9223372036854775807 - 1000", (NOW, user))
        cur.execute("SELECT balance_minor FROM accounts WHERE user_id = %s AND currency = 'CNY'",
                    (user,))
        balance = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, "
            "created_at, entry_key) VALUES (%s, 'CNY', %s, 'credit', 1000, %s, %s, %s)", (user, order, balance, NOW, order))
        cur.execute(
            "INSERT INTO notifications (channel, notification_id, order_no, provider_trade_no, kind, "
            "amount_minor, currency, verified, outcome, detail, anomaly, source, raw_headers, raw_body, "
            "delivery_count, "
            "first_seen_at, last_seen_at) VALUES ('bench', %s, %s, %s, 'paid', 1000, 'CNY', TRUE, "
            "'credited', NULL, FALSE, 'notify', '{}', x'7b7d', 1, %s, %s) ON DUPLICATE KEY UPDATE "
            "detail = IF(outcome = 'credited', detail, VALUES(detail)), "
            "outcome = IF(outcome = 'credited', outcome, VALUES(outcome)), "
            "delivery_count = delivery_count + 1, last_seen_at = VALUES(last_seen_at)",
            (nid, order, trade, NOW, NOW))
        cur.execute("SELECT id, delivery_count FROM notifications WHERE channel = 'bench' "
                    "AND notification_id = %s", (nid,))
        cur.fetchall()
        db.commit()
        latencies.append((time.perf_counter() - started) * 1000)
        n += clients
    return latencies


def main() -> None:
    host, port, database = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    clients, seconds = int(sys.argv[4]), float(sys.argv[5])
    with multiprocessing.Pool(clients) as pool:
        runs = pool.map(client, [(host, port, database, i, clients, seconds) for i in range(clients)])
    latencies = sorted(l for run in runs for l in run)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({
        "transactions": len(latencies),
        "seconds": seconds,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }))


if __name__ == "__main__":
    main()
