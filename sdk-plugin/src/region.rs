//! Regions as iapd's API gives them: ISO 3166-1 alpha-2, whatever form the
//! store sends (Google `US`, Samsung and Apple `USA`).

use crate::Ctx;

/// `code` as an ISO 3166-1 alpha-2 code, from its alpha-2 or alpha-3 form in
/// any case (`USA` and `us` are `US`); `None` if it is neither.
pub fn alpha2(code: &str) -> Option<&'static str> {
    let country = match code.len() {
        2 => celes::Country::from_alpha2(code),
        3 => celes::Country::from_alpha3(code),
        _ => return None,
    };
    country.ok().map(|country| country.alpha2)
}

/// The `region_code` of a purchase whose store said `code`: [`alpha2`], or
/// empty for a code that is not ISO 3166-1, logged at debug. The verify goes
/// on either way, and the raw answer keeps the store's value.
pub fn region_code(cx: &Ctx, store: &str, code: &str) -> String {
    if code.is_empty() {
        return String::new();
    }
    match alpha2(code) {
        Some(alpha2) => alpha2.to_owned(),
        None => {
            cx.log(
                log::Level::Debug,
                &format!("{store} answered region {code:?}, not an iso 3166-1 code: region_code left empty"),
            );
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::alpha2;

    #[test]
    fn alpha3_and_alpha2_codes_become_alpha2_and_others_none() {
        for (code, expected) in [
            ("USA", Some("US")),
            ("KOR", Some("KR")),
            ("kor", Some("KR")),
            ("US", Some("US")),
            ("jp", Some("JP")),
            ("XKX", Some("XK")),
            ("ZZZ", None),
            ("ZZ", None),
            ("", None),
            ("U", None),
            ("USAA", None),
            ("840", None),
        ] {
            assert_eq!(alpha2(code), expected, "{code:?}");
        }
    }
}
