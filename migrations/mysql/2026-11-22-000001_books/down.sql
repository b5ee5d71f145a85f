DROP TABLE notifications;
DROP TABLE ledger;
DROP TABLE orders;
DROP TABLE accounts;
