//! Finds e-mail addresses, phone numbers and payment card numbers in text.
//! One pass, linear in the text; no regular expressions.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
    Card,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Email, Kind::Phone, Kind::Card];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Kind::Email => "[REDACTED:EMAIL]",
            Kind::Phone => "[REDACTED:PHONE]",
            Kind::Card => "[REDACTED:CARD]",
        }
    }
}

/// Which kinds to redact, and how many of each were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub email: u32,
    pub phone: u32,
    pub card: u32,
}

impl Tally {
    fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Email => self.email += 1,
            Kind::Phone => self.phone += 1,
            Kind::Card => self.card += 1,
        }
    }

    pub fn of(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Email => self.email,
            Kind::Phone => self.phone,
            Kind::Card => self.card,
        }
    }
}

/// `text` with every wanted kind replaced by its marker; None when nothing was found.
pub fn redact(text: &str, wanted: &[Kind], tally: &mut Tally) -> Option<String> {
    let found = find(text, wanted);
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, kind) in found {
        out.push_str(&text[copied..start]);
        out.push_str(kind.marker());
        tally.count(kind);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Non-overlapping spans, in order.
fn find(text: &str, wanted: &[Kind]) -> Vec<(usize, usize, Kind)> {
    let bytes = text.as_bytes();
    let mut emails = if wanted.contains(&Kind::Email) { emails(bytes) } else { Vec::new() };
    let numbers =
        if wanted.contains(&Kind::Phone) || wanted.contains(&Kind::Card) { numbers(bytes, wanted) } else { Vec::new() };
    // A number inside an e-mail address belongs to the address.
    let mut spans: Vec<_> =
        numbers.into_iter().filter(|&(s, e, _)| !emails.iter().any(|&(es, ee, _)| s < ee && es < e)).collect();
    spans.append(&mut emails);
    spans.sort_unstable_by_key(|&(start, _, _)| start);
    spans
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn emails(bytes: &[u8]) -> Vec<(usize, usize, Kind)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut spans = Vec::new();
    let mut after_last = 0;
    for at in (0..bytes.len()).filter(|&i| bytes[i] == b'@') {
        let mut start = at;
        while start > after_last && local(bytes[start - 1]) {
            start -= 1;
        }
        while start < at && bytes[start] == b'.' {
            start += 1;
        }
        let mut end = at + 1;
        while end < bytes.len() && domain(bytes[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let host = &bytes[at + 1..end];
        let top = host.rsplit(|&b| b == b'.').next().unwrap_or(b"");
        let labels_ok = host.split(|&b| b == b'.').all(|label| !label.is_empty());
        if start < at && host.contains(&b'.') && labels_ok && top.len() >= 2 && top.iter().all(u8::is_ascii_alphabetic)
        {
            spans.push((start, end, Kind::Email));
            after_last = end;
        }
    }
    spans
}

/// Digit groups joined by single separators, with an optional leading `+`
/// and parentheses around a group: `+1 (415) 555-0100`, `4111 1111 1111 1111`.
fn numbers(bytes: &[u8], wanted: &[Kind]) -> Vec<(usize, usize, Kind)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_digit()
            || (matches!(bytes[i], b'+' | b'(') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !starts || (i > 0 && is_word(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = Vec::new();
        let mut end;
        if matches!(bytes[i], b'+' | b'(') {
            i += 1;
        }
        loop {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                digits.push(bytes[i] - b'0');
                i += 1;
            }
            end = i;
            // Up to two separators (as in ") " or " (") may join the next group.
            let mut next = i;
            while next < bytes.len() && next - i < 2 && b" -.()".contains(&bytes[next]) {
                next += 1;
            }
            if next > i && next < bytes.len() && bytes[next].is_ascii_digit() && digits.len() < 20 {
                i = next;
            } else {
                break;
            }
        }
        if end < bytes.len() && bytes[end] == b')' {
            end += 1;
        }
        if end < bytes.len() && is_word(bytes[end]) {
            i = end + 1;
            continue;
        }
        let kind = if (13..=19).contains(&digits.len()) && luhn(&digits) {
            Some(Kind::Card)
        } else if (10..=15).contains(&digits.len()) {
            Some(Kind::Phone)
        } else {
            None
        };
        if let Some(kind) = kind.filter(|k| wanted.contains(k)) {
            spans.push((start, end, kind));
        }
        i = end.max(start + 1);
    }
    spans
}

/// The Luhn checksum of payment card numbers.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = d as u32;
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> (String, Tally) {
        let mut tally = Tally::default();
        let out = redact(text, &Kind::ALL, &mut tally).unwrap_or_else(|| text.to_owned());
        (out, tally)
    }

    #[test]
    fn redacts_email_addresses() {
        let (out, tally) = all("write to jane.doe+ai@mail.example.co.uk. or bob@x.io");
        assert_eq!(out, "write to [REDACTED:EMAIL]. or [REDACTED:EMAIL]");
        assert_eq!(tally.email, 2);
    }

    #[test]
    fn leaves_things_that_only_look_like_addresses() {
        for text in ["@handle", "a@b", "user@host.c", "x@.com", "a@b..com", "no at sign.com"] {
            assert_eq!(all(text).0, text, "{text}");
        }
    }

    #[test]
    fn redacts_phone_numbers_in_common_shapes() {
        for phone in ["+1 415 555 0100", "(415) 555-0100", "415.555.0100", "+44 20 7946 0958", "4155550100"] {
            let (out, tally) = all(&format!("call {phone} now"));
            assert_eq!(out, "call [REDACTED:PHONE] now", "{phone}");
            assert_eq!(tally.phone, 1);
        }
    }

    #[test]
    fn leaves_short_numbers_dates_and_words_with_digits() {
        for text in ["order 12345", "on 2024-01-15", "v1.2.3", "id abc4155550100", "4155550100xyz"] {
            assert_eq!(all(text).0, text, "{text}");
        }
    }

    #[test]
    fn redacts_luhn_valid_card_numbers_only() {
        let (out, tally) = all("visa 4111 1111 1111 1111, amex 3782-822463-10005, bad 4111 1111 1111 1112");
        assert_eq!(out, "visa [REDACTED:CARD], amex [REDACTED:CARD], bad 4111 1111 1111 1112");
        assert_eq!((tally.card, tally.phone), (2, 0));
    }

    #[test]
    fn luhn_checks_the_known_test_numbers() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("5555555555554444")));
        assert!(!luhn(&digits("4111111111111112")));
    }

    #[test]
    fn redacts_only_the_kinds_asked_for() {
        let mut tally = Tally::default();
        let out = redact("a@b.com 415 555 0100", &[Kind::Phone], &mut tally).unwrap();
        assert_eq!(out, "a@b.com [REDACTED:PHONE]");
    }

    #[test]
    fn a_long_line_of_digits_and_at_signs_is_scanned_in_linear_time() {
        let text = "1 ".repeat(200_000) + &"a@".repeat(200_000);
        let started = std::time::Instant::now();
        all(&text);
        assert!(started.elapsed().as_secs() < 2);
    }
}
