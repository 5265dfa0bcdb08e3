//! What only development and tests use: a fake Shopify loaded from the demo's control files.

use anyhow::Context;
use tributary_control::files::{AdvocateLine, StoresFile};

/// Starts a fake Shopify Admin API holding every store of `stores` that has Admin access, with
/// its token, its discount template and its `advocates` as customers, each with a cost bucket of
/// `bucket_size` points restoring `restore_rate` per second (Shopify's standard plan: 1,000 and
/// 50).
pub async fn start_fake_shopify(
    listen: std::net::SocketAddr,
    stores: &StoresFile,
    advocates: &[AdvocateLine],
    bucket_size: f64,
    restore_rate: f64,
) -> anyhow::Result<tributary_fakes::shopify::FakeShopify> {
    let fake = tributary_fakes::shopify::FakeShopify::start(listen)
        .await
        .with_context(|| format!("serving the fake Shopify on {listen}"))?;
    for entry in &stores.store {
        let Some(admin) = &entry.admin else {
            continue;
        };
        let domain = entry.domain.trim().to_ascii_lowercase();
        fake.add_shop(tributary_fakes::shopify::ShopSetup {
            bucket_size,
            restore_rate,
            ..tributary_fakes::shopify::ShopSetup::new(&domain, &admin.access_token)
        });
        if let Some(template) = &admin.discount_template_id {
            fake.add_code_discount(&domain, template);
        }
        // Advocates shop where they advocate: each is a customer, for store credit.
        for (number, advocate) in (1u64..).zip(advocates) {
            if advocate.shop_domain.trim().eq_ignore_ascii_case(&domain) {
                fake.add_customer(&domain, 7_000_000_000 + number, advocate.email.trim());
            }
        }
    }
    Ok(fake)
}
