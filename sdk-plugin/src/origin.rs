//! The one rule for where a plugin's HTTP requests may go, shared by the host
//! and the kit: an origin is a scheme (`http` or `https`), a host (compared
//! lowercase) and a port (the scheme's default when not written), and a
//! request is allowed when its URL's origin is one of those allowed. A plugin
//! that passes its kit tests therefore passes the host's check too.

use std::fmt;

/// A scheme, host and port an HTTP request may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lowercase host name or IP address.
    pub host: String,
    /// The port, the scheme's default when not written.
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is fine; no path, query
    /// or user).
    pub fn parse(text: &str) -> Result<Origin, String> {
        let url = url::Url::parse(text).map_err(|err| format!("`{text}` is not an origin: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{text}`: only http and https origins are allowed"));
        }
        if !(url.path() == "/" || url.path().is_empty()) || url.query().is_some() || !url.username().is_empty() {
            return Err(format!("`{text}`: an origin is scheme://host[:port] with no path, query or user"));
        }
        Origin::of(&url).ok_or_else(|| format!("`{text}` has no host"))
    }

    /// The origin of a URL.
    pub fn of(url: &url::Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    /// Whether a request to `url` may go to one of `allowed`; a URL that does
    /// not parse may go nowhere.
    pub fn allows(allowed: &[Origin], url: &str) -> bool {
        url::Url::parse(url).ok().and_then(|url| Origin::of(&url)).is_some_and(|origin| allowed.contains(&origin))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;

    #[test]
    fn requests_are_allowed_by_scheme_host_and_port() {
        let allowed: Vec<Origin> = ["https://store.example/", "https://api.example:8443", "http://127.0.0.1:8095"]
            .iter()
            .map(|text| Origin::parse(text).unwrap())
            .collect();
        let cases = [
            ("https://store.example/v1/x", true),
            ("https://store.example", true),
            ("https://store.example:443/v1/x", true),
            ("https://STORE.example/v1/x", true),
            ("https://store.example?q=1", true),
            ("https://api.example:8443/a", true),
            ("http://127.0.0.1:8095/token", true),
            ("http://store.example/v1/x", false),
            ("https://store.example:8443/v1/x", false),
            ("https://api.example/a", false),
            ("https://store.example.evil.example/v1", false),
            ("https://evil.example/https://store.example/", false),
            ("https://user@evil.example", false),
            ("not a url", false),
        ];
        for (url, expected) in cases {
            assert_eq!(Origin::allows(&allowed, url), expected, "{url}");
        }
    }

    #[test]
    fn an_origin_has_no_path_query_or_user() {
        for text in
            ["https://store.example/v1", "https://store.example/?a=1", "https://u@store.example", "ftp://x", "x"]
        {
            assert!(Origin::parse(text).is_err(), "{text}");
        }
        assert_eq!(Origin::parse("https://Store.Example").unwrap().to_string(), "https://store.example:443");
    }
}
