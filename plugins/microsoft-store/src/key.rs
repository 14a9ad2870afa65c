//! The user's Microsoft Store ID key: a JWT the Windows client gets from the
//! Store (`GetCustomerCollectionsIdAsync` / `GetCustomerPurchaseIdAsync`) and
//! the app hands its backend. Only Microsoft can check its signature; the
//! plugin reads its claims to refuse, before asking, a key that cannot work
//! (the wrong kind, another Entra client's, expired), and after Microsoft
//! accepted it, to learn the `userId` the app bound it to. A claim read here
//! never makes a purchase valid on its own.

use base64::Engine as _;
use serde::Deserialize;

/// `aud` (and `iss`) of a collections key.
pub(crate) const COLLECTIONS_KEYS: &str = "https://collections.mp.microsoft.com/v6.0/keys";
/// `aud` (and `iss`) of a purchase key.
pub(crate) const PURCHASE_KEYS: &str = "https://purchase.mp.microsoft.com/v6.0/keys";

/// The two kinds of key, each for its own service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// For collections queries and consume.
    Collections,
    /// For recurrences (subscription billing).
    Purchase,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Collections => "collections",
            KeyKind::Purchase => "purchase",
        }
    }
}

/// What a key says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreIdKey {
    kind: Option<KeyKind>,
    client_id: String,
    /// The `publisherUserId` the app passed when it asked for the key.
    pub(crate) user_id: String,
    expires_at_secs: Option<i64>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: serde_json::Value,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default, rename = "http://schemas.microsoft.com/marketplace/2015/08/claims/key/clientId")]
    client_id: String,
    #[serde(default, rename = "http://schemas.microsoft.com/marketplace/2015/08/claims/key/userId")]
    user_id: String,
}

impl StoreIdKey {
    /// The key's claims, or why `key` is not a Store ID key at all.
    pub(crate) fn read(key: &str) -> Result<StoreIdKey, String> {
        let payload = key.split('.').nth(1).ok_or("it is not a jwt (no payload part)")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| "its payload is not base64url")?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| "its payload is not the claims of a key")?;
        let audiences: Vec<&str> = match &claims.aud {
            serde_json::Value::String(aud) => vec![aud.as_str()],
            serde_json::Value::Array(list) => list.iter().filter_map(serde_json::Value::as_str).collect(),
            _ => Vec::new(),
        };
        let kind = audiences.iter().find_map(|aud| match aud.trim_end_matches('/') {
            COLLECTIONS_KEYS => Some(KeyKind::Collections),
            PURCHASE_KEYS => Some(KeyKind::Purchase),
            _ => None,
        });
        Ok(StoreIdKey { kind, client_id: claims.client_id, user_id: claims.user_id, expires_at_secs: claims.exp })
    }

    /// Why this key cannot serve as a `wanted` key for the Entra client
    /// `client_id` at `now_secs`; `None` if Microsoft may accept it.
    pub(crate) fn refusal(&self, wanted: KeyKind, client_id: &str, now_secs: i64) -> Option<String> {
        match self.kind {
            Some(kind) if kind == wanted => {}
            Some(kind) => {
                return Some(format!(
                    "the store id key is a {} key, and this needs a {} key",
                    kind.name(),
                    wanted.name()
                ));
            }
            None => return Some(format!("the store id key's audience is not microsoft's {} keys", wanted.name())),
        }
        if !self.client_id.is_empty() && normalized(&self.client_id) != normalized(client_id) {
            return Some(format!(
                "the store id key was made for entra client `{}`, not this store's `{client_id}`",
                self.client_id
            ));
        }
        match self.expires_at_secs {
            Some(exp) if exp <= now_secs => Some(format!(
                "the store id key expired at unix time {exp}; the client must get a new one (renew keys before they expire)"
            )),
            _ => None,
        }
    }
}

/// A client id as Microsoft compares it: the key's claim has no dashes.
fn normalized(client_id: &str) -> String {
    client_id.chars().filter(|c| *c != '-').flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(claims: serde_json::Value) -> String {
        let encode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
        };
        format!("{}.{}.c2ln", encode(&serde_json::json!({"typ": "JWT", "alg": "RS256"})), encode(&claims))
    }

    #[test]
    fn a_key_is_refused_for_the_wrong_service_client_or_time() {
        let claim = |name: &str| format!("http://schemas.microsoft.com/marketplace/2015/08/claims/key/{name}");
        let collections = key(serde_json::json!({
            "aud": COLLECTIONS_KEYS, "iss": COLLECTIONS_KEYS, "exp": 1_000,
            claim("clientId"): "1234ABCD00000000000000000000abcd", claim("userId"): "user-42",
        }));
        let read = StoreIdKey::read(&collections).expect("a key");
        assert_eq!(read.user_id, "user-42");
        let client = "1234abcd-0000-0000-0000-00000000ABCD";
        assert_eq!(read.refusal(KeyKind::Collections, client, 999), None, "dashes and case do not matter");
        assert!(read.refusal(KeyKind::Purchase, client, 999).unwrap().contains("is a collections key"));
        assert!(read.refusal(KeyKind::Collections, "someone-else", 999).unwrap().contains("made for entra client"));
        assert!(read.refusal(KeyKind::Collections, client, 1_000).unwrap().contains("expired at unix time 1000"));
        let other = StoreIdKey::read(&key(serde_json::json!({"aud": "https://example.com"}))).expect("claims");
        assert!(other.refusal(KeyKind::Collections, client, 0).unwrap().contains("audience"));
        for not_a_key in ["", "abc", "a.!!!.c", "a.bm90IGpzb24.c"] {
            assert!(StoreIdKey::read(not_a_key).is_err(), "{not_a_key}");
        }
    }
}
