//! Google's resources into iapd's: `ProductPurchase` into a verdict and a
//! normalized purchase, `OneTimeProduct` and `Subscription` into catalog items.

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde::Deserialize;
use serde_json::Value;

use crate::{AccountIdHash, Config};

/// `ProductPurchase`, as the discovery document types it: int64 as strings.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProductPurchase {
    purchase_time_millis: Option<String>,
    purchase_state: Option<i32>,
    consumption_state: Option<i32>,
    developer_payload: Option<String>,
    order_id: Option<String>,
    purchase_type: Option<i32>,
    acknowledgement_state: Option<i32>,
    quantity: Option<i32>,
    obfuscated_external_account_id: Option<String>,
    obfuscated_external_profile_id: Option<String>,
    region_code: Option<String>,
    refundable_quantity: Option<i32>,
}

impl ProductPurchase {
    /// Acknowledged and still owned (a consumed purchase counts as consumed, not acknowledged).
    pub(crate) fn is_acknowledged(&self) -> bool {
        self.purchase_state == Some(0) && self.acknowledgement_state == Some(1) && self.consumption_state != Some(1)
    }

    /// Consumed.
    pub(crate) fn is_consumed(&self) -> bool {
        self.purchase_state == Some(0) && self.consumption_state == Some(1)
    }
}

/// `purchaseType` values (absent for a standard purchase).
const PURCHASE_TYPE_TEST: i32 = 0;
const PURCHASE_TYPE_REWARDED: i32 = 2;

/// The verdict on a purchase Google found.
pub(crate) fn verdict(
    config: &Config,
    request: &proto::VerifyRequest,
    response: &HttpResponse,
) -> Result<proto::VerifyResponse, PluginError> {
    let google: ProductPurchase = response.json()?;
    let malformed = |detail: String| {
        PluginError::malformed_response(
            response.status(),
            format!("google play answered purchases.products.get with {detail}"),
        )
    };
    let purchase_time = match &google.purchase_time_millis {
        Some(millis) => millis.parse::<i64>().map_err(|_| malformed(format!("purchaseTimeMillis {millis:?}")))?,
        None => 0,
    };
    let state = match google.purchase_state {
        Some(0) if google.refundable_quantity == Some(0) => PurchaseState::Refunded,
        Some(0) => PurchaseState::Purchased,
        Some(1) => PurchaseState::Canceled,
        Some(2) => PurchaseState::Pending,
        other => return Err(malformed(format!("purchaseState {other:?}, which iapd does not know"))),
    };
    let consumed = google.consumption_state == Some(1);
    let kind = if consumed
        || google.purchase_type == Some(PURCHASE_TYPE_REWARDED)
        || config.consumable_products.contains(&request.product_id)
    {
        ProductKind::Consumable
    } else if config.consumable_products.is_empty() {
        ProductKind::Unspecified
    } else {
        ProductKind::NonConsumable
    };
    let test = google.purchase_type == Some(PURCHASE_TYPE_TEST);
    let account_binding = google
        .obfuscated_external_account_id
        .clone()
        .or(google.obfuscated_external_profile_id.clone())
        .unwrap_or_default();
    let (verdict, verdict_reason) = match state {
        PurchaseState::Pending => (Verdict::Pending, "payment pending at google play (purchaseState 2)".to_owned()),
        PurchaseState::Canceled => (Verdict::Canceled, "canceled at google play (purchaseState 1)".to_owned()),
        PurchaseState::Refunded => (Verdict::Refunded, "refunded at google play (refundableQuantity 0)".to_owned()),
        _ if !request.user_id.is_empty()
            && !account_binding.is_empty()
            && account_binding != expected_binding(config.account_id_hash, &request.user_id) =>
        {
            (Verdict::UserMismatch, "the purchase's obfuscatedExternalAccountId is another user's".to_owned())
        }
        _ if test && !config.allow_test_purchases => (
            Verdict::Invalid,
            "a license tester's purchase (purchaseType 0), refused: `allow_test_purchases` is false".to_owned(),
        ),
        _ => (Verdict::Valid, String::new()),
    };
    let purchase = proto::Purchase {
        state: state.into(),
        consumption_state: if consumed { ConsumptionState::Consumed } else { ConsumptionState::NotConsumed }.into(),
        acknowledgement_state: match google.acknowledgement_state {
            Some(1) => AcknowledgementState::Acknowledged,
            _ => AcknowledgementState::NotAcknowledged,
        }
        .into(),
        order_id: google.order_id.unwrap_or_default(),
        transaction_id: String::new(),
        purchase_time_unix_millis: purchase_time,
        expiry_time_unix_millis: 0,
        quantity: google.quantity.unwrap_or(1),
        kind: kind.into(),
        environment: if test { Environment::Test } else { Environment::Production }.into(),
        developer_payload: google.developer_payload.unwrap_or_default(),
        region_code: google.region_code.unwrap_or_default(),
        account_binding,
        raw_store_response: String::from_utf8_lossy(response.body()).into_owned(),
    };
    Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason, purchase: Some(purchase) })
}

/// What the app put in `obfuscatedAccountId` for `user_id`.
fn expected_binding(hash: AccountIdHash, user_id: &str) -> String {
    match hash {
        AccountIdHash::None => user_id.to_owned(),
        AccountIdHash::Sha256 => ring::digest::digest(&ring::digest::SHA256, user_id.as_bytes())
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    }
}

pub(crate) struct CatalogPage {
    pub(crate) items: Vec<proto::CatalogItem>,
    pub(crate) next_page_token: Option<String>,
}

/// One page of `ListOneTimeProductsResponse` or `ListSubscriptionsResponse`.
pub(crate) fn catalog_page(
    config: &Config,
    subscriptions: bool,
    response: &HttpResponse,
) -> Result<CatalogPage, PluginError> {
    /// Either listing's page; each product is read leniently below.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CatalogListing {
        #[serde(default)]
        one_time_products: Vec<Value>,
        #[serde(default)]
        subscriptions: Vec<Value>,
        next_page_token: Option<String>,
    }
    let body: CatalogListing = response.json()?;
    let items = if subscriptions {
        body.subscriptions.iter().map(|product| subscription(config, product)).collect()
    } else {
        body.one_time_products.iter().map(|product| one_time_product(config, product)).collect()
    };
    let next_page_token = body.next_page_token.filter(|token| !token.is_empty());
    Ok(CatalogPage { items, next_page_token })
}

fn one_time_product(config: &Config, product: &Value) -> proto::CatalogItem {
    let product_id = text(product, "productId");
    let options = array(product, "purchaseOptions");
    let active = |option: &&Value| option.get("state").and_then(Value::as_str) == Some("ACTIVE");
    let option = options.iter().find(active).or(options.first());
    let price =
        option.and_then(|option| regional_price(config, array(option, "regionalPricingAndAvailabilityConfigs")));
    let kind = if config.consumable_products.contains(&product_id) {
        ProductKind::Consumable
    } else if config.consumable_products.is_empty() {
        ProductKind::Unspecified
    } else {
        ProductKind::NonConsumable
    };
    catalog_item(config, product, product_id, kind, price, options.iter().any(|option| active(&option)))
}

fn subscription(config: &Config, product: &Value) -> proto::CatalogItem {
    let product_id = text(product, "productId");
    let plans = array(product, "basePlans");
    let active = |plan: &&Value| plan.get("state").and_then(Value::as_str) == Some("ACTIVE");
    let plan = plans.iter().find(active).or(plans.first());
    let price = plan.and_then(|plan| regional_price(config, array(plan, "regionalConfigs")));
    catalog_item(config, product, product_id, ProductKind::Subscription, price, plans.iter().any(|plan| active(&plan)))
}

fn catalog_item(
    config: &Config,
    product: &Value,
    product_id: String,
    kind: ProductKind,
    price: Option<(String, i64)>,
    active: bool,
) -> proto::CatalogItem {
    let listings = array(product, "listings");
    let listing = listings
        .iter()
        .find(|listing| listing.get("languageCode").and_then(Value::as_str) == Some(config.language.as_str()))
        .or(listings.first());
    let (price_currency_code, price_amount_micros) = price.unwrap_or_default();
    proto::CatalogItem {
        product_id,
        kind: kind.into(),
        title: listing.map(|listing| text(listing, "title")).unwrap_or_default(),
        description: listing.map(|listing| text(listing, "description")).unwrap_or_default(),
        price_currency_code,
        price_amount_micros,
        active,
    }
}

/// The configured region's price (else the first), as currency and micros.
fn regional_price(config: &Config, regions: &[Value]) -> Option<(String, i64)> {
    let region = regions
        .iter()
        .find(|region| region.get("regionCode").and_then(Value::as_str) == Some(config.price_region.as_str()))
        .or(regions.first())?;
    let money = region.get("price")?;
    let units = money.get("units").and_then(Value::as_str).and_then(|units| units.parse::<i64>().ok()).unwrap_or(0);
    let nanos = money.get("nanos").and_then(Value::as_i64).unwrap_or(0);
    Some((text(money, "currencyCode"), units.saturating_mul(1_000_000).saturating_add(nanos / 1_000)))
}

fn text(value: &Value, field: &str) -> String {
    value.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn array<'a>(value: &'a Value, field: &str) -> &'a [Value] {
    value.get(field).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}
