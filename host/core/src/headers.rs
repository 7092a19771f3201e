//! Header maps as processors read and change them, and the rules a header set by a processor must follow.

use crate::failure::{Failure, quoted};

/// RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Set by the gateway from the body it actually sends.
pub const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// What a processor may not set: the gateway manages these.
pub fn is_managed(name: &str) -> bool {
    HOP_BY_HOP.iter().chain(&FRAMING).any(|managed| managed.eq_ignore_ascii_case(name))
}

/// RFC 9110 5.6.2: `tchar`, the characters of a token.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// RFC 9110 5.5: `field-vchar = VCHAR / obs-text`.
fn is_field_vchar(byte: u8) -> bool {
    matches!(byte, 0x21..=0x7e | 0x80..=0xff)
}

/// RFC 9110 5.6.2: `token = 1*tchar`, as header names and methods are.
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// Refuses a header a processor may not set: bad syntax, or one the gateway manages.
pub fn check_header(name: &str, value: &str) -> Result<(), Failure> {
    // RFC 9110 5.1: field-name = token
    if !is_token(name) {
        return Err(Failure::abi(format!("{} is not a valid header name", quoted(name))));
    }
    // RFC 9110 5.5: field-value = *( field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ] )
    if let Some(bad) = value.bytes().find(|&b| !(is_field_vchar(b) || b == b' ' || b == b'\t')) {
        let what = match bad {
            b'\r' | b'\n' | 0 => "CR, LF or NUL".to_owned(),
            other => format!("control character {other:#04x}"),
        };
        return Err(Failure::abi(format!("the value of header {} contains {what}", quoted(name))));
    }
    // RFC 9110 5.5: no whitespace at either end (it would be the field's OWS, not its value)
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(Failure::abi(format!("the value of header {} starts or ends with whitespace", quoted(name))));
    }
    // RFC 9110 7.6.1: hop-by-hop and framing headers are the gateway's
    if is_managed(name) {
        return Err(Failure::abi(format!("header {} is managed by the gateway", quoted(name))));
    }
    Ok(())
}

/// A message's headers in order, repeated names kept, names compared without case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, String)>,
    /// The length of every name and value: what bounds a map a guest grows.
    bytes: usize,
}

impl HeaderMap {
    pub fn new(entries: Vec<(String, String)>) -> HeaderMap {
        let mut headers = HeaderMap { entries, bytes: 0 };
        headers.recount();
        headers
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// What `bytes` would be after `set(name, value)`: checked before anything is stored.
    pub fn bytes_after_set(&self, name: &str, value: &str) -> usize {
        let matching = self.entries.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let replaced: usize = matching.map(|(n, v)| n.len() + v.len()).sum();
        self.bytes - replaced + name.len() + value.len()
    }

    /// Replaces every value of `name` with one, where the first of them was.
    pub fn set(&mut self, name: String, value: String) {
        let Some(first) = self.entries.iter().position(|(n, _)| n.eq_ignore_ascii_case(&name)) else {
            return self.add(name, value);
        };
        let mut index = 0;
        self.entries.retain(|(n, _)| {
            let keep = index <= first || !n.eq_ignore_ascii_case(&name);
            index += 1;
            keep
        });
        self.entries[first] = (name, value);
        self.recount();
    }

    pub fn add(&mut self, name: String, value: String) {
        self.bytes += name.len() + value.len();
        self.entries.push((name, value));
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.recount();
    }

    fn recount(&mut self) {
        self.bytes = self.entries.iter().map(|(n, v)| n.len() + v.len()).sum();
    }

    /// `get-headers`' result: a MessagePack array of `[name, value]` pairs, names in lower case.
    pub fn encode(&self) -> Vec<u8> {
        encode_pairs(self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

/// A MessagePack array of `[lower-case name, value]` string pairs.
pub fn encode_pairs<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * 32 + 5);
    rmp::encode::write_array_len(&mut out, pairs.len() as u32).expect("writing to a Vec");
    for (name, value) in pairs {
        rmp::encode::write_array_len(&mut out, 2).expect("writing to a Vec");
        rmp::encode::write_str(&mut out, &name.to_ascii_lowercase()).expect("writing to a Vec");
        rmp::encode::write_str(&mut out, value).expect("writing to a Vec");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn a_name_must_be_a_token() {
        assert!(check_header("x-ok", "v").is_ok());
        assert!(check_header("a b", "v").unwrap_err().detail.contains("not a valid header name"));
        assert!(check_header("", "v").is_err());
    }

    #[test]
    fn a_value_may_not_hold_cr_lf_or_nul() {
        for value in ["a\r\nb", "a\nb", "a\0b"] {
            assert!(check_header("x", value).unwrap_err().detail.contains("CR, LF or NUL"));
        }
    }

    #[test]
    fn a_value_may_not_hold_other_control_characters() {
        for value in ["a\x01b", "a\x1fb", "a\x7fb"] {
            let failure = check_header("x", value).unwrap_err();
            assert!(failure.detail.contains("control character"), "{}", failure.detail);
        }
    }

    #[test]
    fn a_value_may_hold_spaces_tabs_and_non_ascii_inside() {
        assert!(check_header("x", "a b\tc é").is_ok());
        assert!(check_header("x", "").is_ok());
    }

    #[test]
    fn a_value_may_not_start_or_end_with_whitespace() {
        assert!(check_header("x", " a").is_err());
        assert!(check_header("x", "a\t").is_err());
    }

    #[test]
    fn hop_by_hop_and_framing_headers_are_the_gateways() {
        for name in ["Content-Length", "transfer-encoding", "Connection", "upgrade"] {
            assert!(check_header(name, "1").unwrap_err().detail.contains("managed by the gateway"));
        }
    }

    #[test]
    fn set_replaces_every_value_where_the_first_was() {
        let mut headers = map(&[("A", "1"), ("b", "2"), ("a", "3")]);
        headers.set("a".into(), "new".into());
        assert_eq!(headers, map(&[("a", "new"), ("b", "2")]));
        assert_eq!(headers.bytes(), 6);
    }

    #[test]
    fn bytes_after_set_is_what_set_makes() {
        let headers = map(&[("A", "1"), ("b", "2"), ("a", "3")]);
        let expected = headers.bytes_after_set("a", "new");
        let mut set = headers.clone();
        set.set("a".into(), "new".into());
        assert_eq!(set.bytes(), expected);
    }

    #[test]
    fn get_is_case_insensitive_and_finds_the_first() {
        let headers = map(&[("X-A", "1"), ("x-a", "2")]);
        assert_eq!(headers.get("x-A"), Some("1"));
        assert_eq!(headers.get("missing"), None);
    }

    #[test]
    fn remove_drops_every_value() {
        let mut headers = map(&[("a", "1"), ("b", "2"), ("A", "3")]);
        headers.remove("A");
        assert_eq!(headers, map(&[("b", "2")]));
        assert_eq!(headers.bytes(), 2);
    }

    #[test]
    fn encode_makes_msgpack_pairs_with_lower_case_names() {
        let encoded = map(&[("X-A", "1")]).encode();
        // fixarray(1) [ fixarray(2) [ fixstr "x-a", fixstr "1" ] ]
        assert_eq!(encoded, b"\x91\x92\xa3x-a\xa11");
    }
}
