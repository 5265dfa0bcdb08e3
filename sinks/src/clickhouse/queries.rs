//! Every query tributary reads ClickHouse with: what operators, the demo and the benchmark ask of
//! the tables and views the migrations create (`migrations/`). The sink's own writes are in
//! `mod.rs`. Amounts come back as text (`toString`) so that decimals keep their exact digits.

use clickhouse::error::Error;
use clickhouse::query::RowCursor;
use clickhouse::Client;

use super::row::ExportRow;

/// Per (shop, advocate identifier): orders, gross and net as text, from the `advocate_stats` view.
pub async fn advocate_revenue(
    client: &Client,
) -> Result<Vec<(String, String, String, String, String)>, Error> {
    client
        .query(
            "SELECT shop_domain, advocate_identifier, toString(sum(orders)), toString(sum(gross)),
                    toString(sum(net))
             FROM advocate_stats GROUP BY shop_domain, advocate_identifier",
        )
        .fetch_all()
        .await
}

/// Per (shop, advocate identifier): the reward wallet's balance in points, as text.
pub async fn reward_balances(client: &Client) -> Result<Vec<(String, String, String)>, Error> {
    client
        .query("SELECT shop_domain, advocate_identifier, toString(balance) FROM reward_balances")
        .fetch_all()
        .await
}

/// Reward requests waiting for approval, of one shop (`""`: every shop): shop, order id,
/// advocate identifier, points and the time requested (UTC), oldest first.
pub async fn pending_rewards(
    client: &Client,
    shop: &str,
) -> Result<Vec<(String, u64, String, String, String)>, Error> {
    client
        .query(
            "SELECT shop_domain, order_id, advocate_identifier, toString(points),
                    toString(requested_at)
             FROM reward_requests_pending WHERE ? = '' OR shop_domain = ?
             ORDER BY shop_domain, requested_at, order_id",
        )
        .bind(shop)
        .bind(shop)
        .fetch_all()
        .await
}

/// The ids of a shop's attributed orders, ascending.
pub async fn attributed_orders(client: &Client, shop: &str) -> Result<Vec<u64>, Error> {
    client
        .query("SELECT order_id FROM attributions_current WHERE shop_domain = ? AND outcome = 'ATTRIBUTED' ORDER BY order_id")
        .bind(shop)
        .fetch_all()
        .await
}

/// How many of a shop's orders are attributed.
pub async fn attributed_order_count(client: &Client, shop: &str) -> Result<u64, Error> {
    client
        .query("SELECT count() FROM attributions_current WHERE shop_domain = ? AND outcome = 'ATTRIBUTED'")
        .bind(shop)
        .fetch_one()
        .await
}

/// How many reward ledger entries of a shop move store credit (approvals and reversals of a
/// positive number of points): one Shopify transaction each, once store credit has caught up.
pub async fn store_credit_movements(client: &Client, shop: &str) -> Result<u64, Error> {
    client
        .query("SELECT countIf(kind IN ('APPROVAL', 'REVERSAL') AND points > 0) FROM reward_ledger FINAL WHERE shop_domain = ?")
        .bind(shop)
        .fetch_one()
        .await
}

/// The distinct order ids written between `low` and `high` (inclusive), any revision.
pub async fn orders_written_between(
    client: &Client,
    low: u64,
    high: u64,
) -> Result<Vec<u64>, Error> {
    client
        .query("SELECT DISTINCT order_id FROM attributions WHERE order_id BETWEEN ? AND ?")
        .bind(low)
        .bind(high)
        .fetch_all()
        .await
}

/// The attributed orders of one shop (`""`: every shop) created in `[from_s, to_s)` (seconds
/// since the epoch), each in its current state, by shop, creation time and id: read as a stream,
/// so an export of any size holds one row at a time.
pub fn attributed_orders_for_export(
    client: &Client,
    shop: &str,
    from_s: u64,
    to_s: u64,
) -> Result<RowCursor<ExportRow>, Error> {
    client
        .query(
            "SELECT shop_domain, order_id, order_name, created_at, customer_email,
                    advocate_identifier, source, code, currency, gross, refunded, net, refund_status
             FROM attributions FINAL
             WHERE outcome = 'ATTRIBUTED' AND (? = '' OR shop_domain = ?)
               AND toUInt32(created_at) >= ? AND toUInt32(created_at) < ?
             ORDER BY shop_domain, created_at, order_id",
        )
        .bind(shop)
        .bind(shop)
        .bind(from_s)
        .bind(to_s)
        .fetch()
}
