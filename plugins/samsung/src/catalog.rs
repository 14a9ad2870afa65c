//! ListItems: Samsung's item pages, filtered by kind and re-paged to the
//! caller's page size, then the subscriptions the config declares.
//!
//! A page token says where to resume: `p<samsung page>.<offset in it>` while
//! Samsung's items are listed, `c<index>` in the configured subscriptions.

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, ProductKind};
use serde::Deserialize;

/// A subscription declared in the config: Samsung's item API lists none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscription {
    product_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    /// ISO 4217.
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default)]
    price_micros: i64,
    #[serde(default = "default_true")]
    active: bool,
}

fn default_currency() -> String {
    "USD".to_owned()
}
fn default_true() -> bool {
    true
}

/// One page of the IAP Publish API's item list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ItemPage {
    total_count: Option<u64>,
    #[serde(default)]
    item_list: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    status: String,
    usd_price: Option<serde_json::Number>,
}

impl Item {
    fn kind(&self) -> ProductKind {
        match self.kind.as_str() {
            "CONSUMABLE" => ProductKind::Consumable,
            "NON_CONSUMABLE" => ProductKind::NonConsumable,
            _ => ProductKind::Unspecified,
        }
    }
}

/// Where a listing resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Samsung { page: u32, offset: usize },
    Config { index: usize },
    Done,
}

/// Builds one ListItems page.
#[derive(Debug)]
pub(crate) struct Pager<'a> {
    kind: ProductKind,
    subscriptions: &'a [Subscription],
    samsung_page_size: u32,
    position: Position,
    items: Vec<proto::CatalogItem>,
}

impl<'a> Pager<'a> {
    pub(crate) fn new(
        kind: ProductKind,
        page_token: &str,
        subscriptions: &'a [Subscription],
        samsung_page_size: u32,
    ) -> Result<Pager<'a>, PluginError> {
        let position = match page_token {
            "" if kind == ProductKind::Subscription => Position::Config { index: 0 },
            "" => Position::Samsung { page: 1, offset: 0 },
            token => parse_token(token, kind, samsung_page_size).ok_or_else(|| {
                PluginError::invalid_argument("page_token: not a token this store issued for this kind")
                    .with_reason("INVALID_PAGE_TOKEN")
            })?,
        };
        Ok(Pager { kind, subscriptions, samsung_page_size, position, items: Vec::new() })
    }

    /// The Samsung page to fetch next, if the page being built needs one;
    /// takes what it needs from the configured subscriptions meanwhile.
    pub(crate) fn wanted_samsung_page(&mut self, page_size: usize) -> Option<u32> {
        loop {
            if self.items.len() >= page_size {
                return None;
            }
            match self.position {
                Position::Samsung { page, .. } => return Some(page),
                Position::Config { index } => {
                    let wanted = self.kind == ProductKind::Unspecified || self.kind == ProductKind::Subscription;
                    let available = if wanted { self.subscriptions.get(index..).unwrap_or_default() } else { &[] };
                    let taken = available.len().min(page_size - self.items.len());
                    self.items.extend(available[..taken].iter().map(subscription_item));
                    self.position = if taken < available.len() {
                        Position::Config { index: index + taken }
                    } else {
                        Position::Done
                    };
                }
                Position::Done => return None,
            }
        }
    }

    /// Takes the matching items of the Samsung page just fetched.
    pub(crate) fn take_samsung_page(&mut self, answer: ItemPage, page_size: usize) -> Result<(), PluginError> {
        let Position::Samsung { page, offset } = self.position else {
            return Err(PluginError::internal("a samsung page arrived while listing the configured subscriptions"));
        };
        for (index, item) in answer.item_list.iter().enumerate().skip(offset) {
            if self.items.len() >= page_size {
                self.position = Position::Samsung { page, offset: index };
                return Ok(());
            }
            if self.kind == ProductKind::Unspecified || item.kind() == self.kind {
                self.items.push(samsung_item(item)?);
            }
        }
        let size = usize::try_from(self.samsung_page_size).unwrap_or(usize::MAX);
        let seen = u64::from(page).saturating_mul(u64::from(self.samsung_page_size));
        let more = answer.item_list.len() >= size && answer.total_count.is_none_or(|total| seen < total);
        self.position = if more {
            Position::Samsung { page: page + 1, offset: 0 }
        } else if self.kind == ProductKind::Unspecified && !self.subscriptions.is_empty() {
            Position::Config { index: 0 }
        } else {
            Position::Done
        };
        Ok(())
    }

    /// The page built, with the token of the next one.
    pub(crate) fn finish(self) -> proto::ListItemsResponse {
        let next_page_token = match self.position {
            Position::Samsung { page, offset } => format!("p{page}.{offset}"),
            Position::Config { index } => format!("c{index}"),
            Position::Done => String::new(),
        };
        proto::ListItemsResponse { items: self.items, next_page_token }
    }
}

/// A token of ours, consistent with `kind` and the Samsung page size.
fn parse_token(token: &str, kind: ProductKind, samsung_page_size: u32) -> Option<Position> {
    let digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty();
    if let Some(rest) = token.strip_prefix('p') {
        let (page, offset) = rest.split_once('.')?;
        if !digits(page) || !digits(offset) || kind == ProductKind::Subscription {
            return None;
        }
        let (page, offset) = (page.parse::<u32>().ok()?, offset.parse::<usize>().ok()?);
        let within = page >= 1 && offset < usize::try_from(samsung_page_size).ok()?;
        return within.then_some(Position::Samsung { page, offset });
    }
    let index = token.strip_prefix('c').filter(|index| digits(index))?.parse::<usize>().ok()?;
    matches!(kind, ProductKind::Unspecified | ProductKind::Subscription).then_some(Position::Config { index })
}

fn samsung_item(item: &Item) -> Result<proto::CatalogItem, PluginError> {
    let price_amount_micros = match &item.usd_price {
        None => 0,
        Some(price) => usd_micros(&price.to_string()).ok_or_else(|| {
            PluginError::internal(format!(
                "samsung answered the item list with usdPrice {price} for item `{}`, which iapd does not know",
                item.id
            ))
            .with_reason("MALFORMED_RESPONSE")
        })?,
    };
    Ok(proto::CatalogItem {
        product_id: item.id.clone(),
        kind: item.kind().into(),
        title: item.title.clone(),
        description: item.description.clone(),
        price_currency_code: "USD".to_owned(),
        price_amount_micros,
        active: item.status == "PUBLISHED",
    })
}

fn subscription_item(entry: &Subscription) -> proto::CatalogItem {
    proto::CatalogItem {
        product_id: entry.product_id.clone(),
        kind: ProductKind::Subscription.into(),
        title: entry.title.clone(),
        description: entry.description.clone(),
        price_currency_code: entry.currency.clone(),
        price_amount_micros: entry.price_micros,
        active: entry.active,
    }
}

/// A non-negative decimal (`"0.99"`, `"400"`) in millionths, digit by digit
/// so no binary fraction creeps in; `None` for anything else or for more
/// than six decimals.
fn usd_micros(decimal: &str) -> Option<i64> {
    let (whole, fraction) = decimal.split_once('.').unwrap_or((decimal, ""));
    let fraction = fraction.trim_end_matches('0');
    let digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 6 {
        return None;
    }
    let fraction_micros: i64 = format!("{fraction:0<6}").parse().ok()?;
    whole.parse::<i64>().ok()?.checked_mul(1_000_000)?.checked_add(fraction_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_prices_become_micros_exactly() {
        for (text, micros) in [
            ("0", Some(0)),
            ("0.99", Some(990_000)),
            ("400", Some(400_000_000)),
            ("6.5", Some(6_500_000)),
            ("1.000001", Some(1_000_001)),
            ("2.50000", Some(2_500_000)),
            ("1.0000001", None),
            ("-1", None),
            ("1e2", None),
            (".5", None),
        ] {
            assert_eq!(usd_micros(text), micros, "{text}");
        }
        // As serde_json prints the f64 it parsed: the shortest decimal that round-trips.
        let number: serde_json::Number = serde_json::from_str("0.29").unwrap();
        assert_eq!(usd_micros(&number.to_string()), Some(290_000));
    }

    #[test]
    fn only_our_tokens_for_the_same_kind_are_accepted() {
        let parse = |token: &str, kind: ProductKind| parse_token(token, kind, 10);
        assert_eq!(parse("p1.0", ProductKind::Consumable), Some(Position::Samsung { page: 1, offset: 0 }));
        assert_eq!(parse("p3.9", ProductKind::Unspecified), Some(Position::Samsung { page: 3, offset: 9 }));
        assert_eq!(parse("c2", ProductKind::Subscription), Some(Position::Config { index: 2 }));
        for (token, kind) in [
            ("p0.0", ProductKind::Unspecified),
            ("p1.10", ProductKind::Unspecified),
            ("p1.0", ProductKind::Subscription),
            ("c0", ProductKind::Consumable),
            ("p1", ProductKind::Unspecified),
            ("p+1.0", ProductKind::Unspecified),
            ("c", ProductKind::Unspecified),
            ("i2", ProductKind::Unspecified),
            ("CAE=", ProductKind::Unspecified),
        ] {
            assert_eq!(parse(token, kind), None, "{token}");
        }
    }
}
