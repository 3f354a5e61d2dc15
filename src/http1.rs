//! HTTP/1.1 syntax that more than one room reads: `Connection` tokens, decimal
//! `Content-Length` values and hex chunk sizes (RFC 9110 §7.6.1, §8.6; RFC 9112 §7.1).
//!
//! The request-framing tracker, the header rewriter and the upstream client each parse these;
//! one definition keeps them agreeing on every edge (blanks, case, overflow).

/// The tokens of a `Connection` header value (RFC 9110 §7.6.1: a comma-separated list of
/// case-insensitive option names), blanks trimmed, empty elements skipped.
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
}

/// Whether the `Connection` header values name `option` (any case).
pub fn connection_has<'a>(values: impl IntoIterator<Item = &'a [u8]>, option: &str) -> bool {
    values.into_iter().flat_map(connection_tokens).any(|token| token.eq_ignore_ascii_case(option.as_bytes()))
}

/// A `Content-Length` value (RFC 9110 §8.6: `1*DIGIT`, blanks around it allowed): `None`
/// for anything else, an empty value, or a number that does not fit in 64 bits.
pub fn parse_content_length(digits: &[u8]) -> Option<u64> {
    let digits = digits.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?
    })
}

/// The value of one hex digit of a chunk size (RFC 9112 §7.1: `chunk-size = 1*HEXDIG`).
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn connection_tokens_are_trimmed_and_compared_without_case() {
        let tokens: Vec<&[u8]> = connection_tokens(b" keep-alive ,, Upgrade,x-a").collect();
        assert_eq!(tokens, [&b"keep-alive"[..], b"Upgrade", b"x-a"]);
        assert!(connection_has([&b"close"[..], b"foo, UPGRADE"], "upgrade"));
        assert!(!connection_has([&b"upgrades"[..]], "upgrade"));
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"+1", b"1 2", b"0x10", b"18446744073709551616", b"-0"] {
            assert_eq!(parse_content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hex_digits_of_either_case() {
        let values: Vec<Option<u8>> = b"09afAFgG".iter().map(|&b| hex_digit(b)).collect();
        assert_eq!(values, [Some(0), Some(9), Some(10), Some(15), Some(10), Some(15), None, None]);
    }

    proptest! {
        #[test]
        fn any_u64_reads_back(n in any::<u64>(), pad in 0usize..3) {
            let text = format!("{}{n}{}", " ".repeat(pad), "\t".repeat(pad));
            prop_assert_eq!(parse_content_length(text.as_bytes()), Some(n));
        }
    }
}
