-- Migration 1: tributary's first ClickHouse schema (schema.sql until migrations were versioned).
-- Runs on ClickHouse 18.16 and on current releases. Statements are separated by a line holding
-- only ';'. A shipped migration never changes: a change is a new file (see `migrations.rs`).

-- One row per order: the order's facts and its attribution. The sink inserts every revision the
-- processor emits; ReplacingMergeTree keeps the highest revision per (shop_domain, order_id), and
-- every query reads through FINAL (the views below), so redelivered or replayed rows never count
-- twice. Money is Decimal(18, 4) in the shop currency (gross, refunded, net) and in the presentment
-- currency (presentment_gross).
CREATE TABLE IF NOT EXISTS attributions
(
    shop_domain String,
    order_id UInt64,
    revision UInt64,
    order_name String,
    created_at DateTime,
    latest_updated_at DateTime,
    settled_updated_at DateTime,
    financial_status String,
    cancelled UInt8,
    outcome String,
    source String,
    reason String,
    advocate_id String,
    advocate_identifier String,
    code String,
    customer_email String,
    customer_id UInt64,
    currency String,
    gross Decimal(18, 4),
    presentment_currency String,
    presentment_gross Decimal(18, 4),
    refunded Decimal(18, 4),
    net Decimal(18, 4),
    refund_status String
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(created_at)
ORDER BY (shop_domain, order_id)
;
-- The current state of every order.
CREATE VIEW IF NOT EXISTS attributions_current AS
SELECT * FROM attributions FINAL
;
-- Per advocate and currency: attributed orders, gross, refunded, net and the last order.
CREATE VIEW IF NOT EXISTS advocate_stats AS
SELECT
    shop_domain,
    advocate_id,
    any(advocate_identifier) AS advocate_identifier,
    currency,
    count() AS orders,
    sum(gross) AS gross,
    sum(refunded) AS refunded,
    sum(net) AS net,
    max(created_at) AS last_order_at
FROM attributions FINAL
WHERE outcome = 'ATTRIBUTED'
GROUP BY shop_domain, advocate_id, currency
;
-- The 25 newest attributed orders of each store.
CREATE VIEW IF NOT EXISTS recent_attributed_orders AS
SELECT
    shop_domain, order_id, order_name, created_at, advocate_id, advocate_identifier, source, code,
    currency, gross, net, refund_status
FROM attributions FINAL
WHERE outcome = 'ATTRIBUTED'
ORDER BY shop_domain, created_at DESC, order_id DESC
LIMIT 25 BY shop_domain
;
-- Revenue by day (UTC, of created_at), source and currency; excluded orders (test, channel, tag)
-- are not revenue and are left out. Self-referrals count as Unattributed.
CREATE VIEW IF NOT EXISTS revenue_by_day AS
SELECT
    shop_domain,
    toDate(created_at) AS day,
    source,
    currency,
    count() AS orders,
    sum(gross) AS gross,
    sum(refunded) AS refunded,
    sum(net) AS net
FROM attributions FINAL
WHERE outcome != 'EXCLUDED'
GROUP BY shop_domain, day, source, currency
;
-- Per customer (Shopify customer id) and currency: orders, value (gross and net) and the first and
-- last order. Excluded orders (test, channel, tag) are not purchases and are left out; orders
-- without a customer (customer_id 0) are too.
CREATE VIEW IF NOT EXISTS customers AS
SELECT
    shop_domain,
    customer_id,
    currency,
    count() AS orders,
    sum(gross) AS gross,
    sum(net) AS net,
    min(created_at) AS first_order_at,
    max(created_at) AS last_order_at
FROM attributions FINAL
WHERE outcome != 'EXCLUDED' AND customer_id != 0
GROUP BY shop_domain, customer_id, currency
;
-- The reward ledger: one row per entry (request, approval, reversal, void) with its deterministic
-- id. The sink writes an order's whole ledger with each of its revisions; ReplacingMergeTree
-- keeps one row per id, so reading through FINAL counts every entry once. Points are never
-- negative: approvals credit the wallet, reversals debit it, requests and voids move nothing.
CREATE TABLE IF NOT EXISTS reward_ledger
(
    shop_domain String,
    entry_id String,
    request_id String,
    order_id UInt64,
    kind String,
    advocate_id String,
    advocate_identifier String,
    points Decimal(18, 4),
    reason String,
    at DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (shop_domain, entry_id)
;
-- Wallet balance per advocate: approved points less reversed points.
CREATE VIEW IF NOT EXISTS reward_balances AS
SELECT
    shop_domain,
    advocate_id,
    any(advocate_identifier) AS advocate_identifier,
    sumIf(points, kind = 'APPROVAL') AS credited,
    sumIf(points, kind = 'REVERSAL') AS reversed,
    credited - reversed AS balance
FROM reward_ledger FINAL
GROUP BY shop_domain, advocate_id
;
-- Requests waiting for `tributary rewards approve`: neither approved nor voided.
CREATE VIEW IF NOT EXISTS reward_requests_pending AS
SELECT
    shop_domain,
    request_id,
    any(order_id) AS order_id,
    any(advocate_identifier) AS advocate_identifier,
    sumIf(points, kind = 'REQUEST') AS points,
    min(at) AS requested_at
FROM reward_ledger FINAL
GROUP BY shop_domain, request_id
HAVING countIf(kind IN ('APPROVAL', 'VOID')) = 0
