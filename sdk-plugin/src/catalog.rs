//! A catalog declared in a store's configuration, for stores whose server API
//! cannot list what an app sells (Cafe Bazaar, Apple's App Store Server API).

use serde::Deserialize;

use crate::proto::{self, ProductKind};
use crate::{PluginError, checks};

/// Page size when the caller asks for none.
const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page served.
const MAX_PAGE_SIZE: usize = 1000;

/// One product of a configured catalog (`catalog = [{ product_id, kind, … }]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The product id (SKU).
    pub product_id: String,
    /// `consumable`, `non_consumable` or `subscription`.
    pub kind: CatalogKind,
    /// The title shown to buyers.
    #[serde(default)]
    pub title: String,
    /// The description shown to buyers.
    #[serde(default)]
    pub description: String,
    /// ISO 4217; empty when the price is not configured.
    #[serde(default)]
    pub currency: String,
    /// The price in millionths of the currency unit.
    #[serde(default)]
    pub price_micros: i64,
    /// Whether the product is on sale.
    #[serde(default = "on_sale")]
    pub active: bool,
}

fn on_sale() -> bool {
    true
}

/// The kinds a configured product may have.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// Bought again once used.
    Consumable,
    /// Bought once, kept.
    NonConsumable,
    /// Renewed until canceled.
    Subscription,
}

impl From<CatalogKind> for ProductKind {
    fn from(kind: CatalogKind) -> ProductKind {
        match kind {
            CatalogKind::Consumable => ProductKind::Consumable,
            CatalogKind::NonConsumable => ProductKind::NonConsumable,
            CatalogKind::Subscription => ProductKind::Subscription,
        }
    }
}

/// The kind of `product_id` in `catalog`, UNSPECIFIED when it is not listed.
pub fn kind_of(catalog: &[CatalogEntry], product_id: &str) -> ProductKind {
    catalog
        .iter()
        .find(|entry| entry.product_id == product_id)
        .map_or(ProductKind::Unspecified, |entry| entry.kind.into())
}

/// One page of `catalog` for `request` (its kind filter, page size and page
/// token), after checking the request's app against `packages`. The page
/// token is an offset this function issued; any other is INVALID_ARGUMENT
/// `INVALID_PAGE_TOKEN`.
pub fn page(
    catalog: &[CatalogEntry],
    packages: &[String],
    request: &proto::ListItemsRequest,
) -> Result<proto::ListItemsResponse, PluginError> {
    checks::allowed_package(packages, &request.app_id)?;
    let kind = request.kind();
    let matching: Vec<&CatalogEntry> = catalog
        .iter()
        .filter(|entry| kind == ProductKind::Unspecified || ProductKind::from(entry.kind) == kind)
        .collect();
    let start = match request.page_token.as_str() {
        "" => 0,
        token => token.strip_prefix('i').and_then(|offset| offset.parse::<usize>().ok()).ok_or_else(|| {
            PluginError::invalid_argument("page_token: not a token this store issued").with_reason("INVALID_PAGE_TOKEN")
        })?,
    };
    let page_size = usize::try_from(request.page_size).ok().filter(|size| *size > 0).unwrap_or(DEFAULT_PAGE_SIZE);
    let end = matching.len().min(start.saturating_add(page_size.min(MAX_PAGE_SIZE)));
    let items = matching
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|entry| proto::CatalogItem {
            product_id: entry.product_id.clone(),
            kind: ProductKind::from(entry.kind).into(),
            title: entry.title.clone(),
            description: entry.description.clone(),
            price_currency_code: entry.currency.clone(),
            price_amount_micros: entry.price_micros,
            active: entry.active,
        })
        .collect();
    let next_page_token = if end < matching.len() { format!("i{end}") } else { String::new() };
    Ok(proto::ListItemsResponse { items, next_page_token })
}
