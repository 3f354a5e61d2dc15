//! Which host a request is for (RFC 9112 §3.2, RFC 9110 §7.2), and the request-target forms
//! lameduck accepts (RFC 9112 §3.2.1–§3.2.4).
//!
//! A request whose host is missing, doubled or malformed is answered 400 and reaches no
//! upstream: a backend that reads a second `Host`, or a `Host` like `a b` or `a/../b`, its own
//! way could be routed or cached past the proxy's decision.

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};

/// Why a request's host or target was refused (the text of its 400).
pub type HostError = &'static str;

/// The host the request is for: the target's authority (absolute-form, or HTTP/2's
/// `:authority`), else `Host`; `None` for an HTTP/1.0 request with neither. Refused:
/// - more than one `Host`, or a `Host` that is not `uri-host [":" port]`;
/// - an HTTP/1.1 request without `Host` (RFC 9112 §3.2);
/// - HTTP/2 `:authority` and `Host` that disagree (RFC 9113 §8.3.1);
/// - a target that is neither origin-form, absolute-form, nor `*` for `OPTIONS`.
pub fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if host.is_some_and(|h| !is_valid_host(h.as_bytes())) {
        return Err("Host is not a host name or address with an optional port");
    }
    // Even with an absolute-form target, whose authority then wins (RFC 9112 §3.2).
    if host.is_none() && req.version() == Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header");
    }
    check_target(req)?;
    let uri = req.uri();
    let Some(authority) = uri.authority() else { return Ok(host.cloned()) };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("an absolute-form target must be http or https");
    }
    // Host and port only: any userinfo (`user@`) is not part of where the request goes. It is
    // held to the rules of `Host`, since it replaces it.
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    if host_and_port.is_empty() || !is_valid_host(host_and_port.as_bytes()) {
        return Err("the target's authority is not a host name or address with an optional port");
    }
    let target_host =
        HeaderValue::from_str(host_and_port).map_err(|_| "the target's host is not a valid header value")?;
    let disagree = host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(target_host.as_bytes()));
    if req.version() == Version::HTTP_2 && disagree {
        return Err(":authority and Host disagree");
    }
    Ok(Some(target_host))
}

/// Origin-form (`/path`), absolute-form (`http://host/path`, and HTTP/2's pseudo-headers),
/// or `*` for `OPTIONS` (RFC 9112 §3.2.4); authority-form is CONNECT's, refused before this.
fn check_target<B>(req: &Request<B>) -> Result<(), HostError> {
    let uri = req.uri();
    if uri.scheme().is_some() || uri.path().starts_with('/') {
        return Ok(());
    }
    if uri.path() == "*" && uri.authority().is_none() {
        return if req.method() == Method::OPTIONS { Ok(()) } else { Err("* is a target for OPTIONS only") };
    }
    Err("the request target is not origin-form or absolute-form")
}

/// RFC 9110 §7.2: `uri-host [ ":" port ]`, with a non-empty port of at most 65535. The empty
/// value is valid (a target with no authority). Names are held to what hosts use: letters,
/// digits, `-`, `.`, `_`, `~` and percent-escapes; no list separators, blanks or slashes.
/// Runs on every request: a pass over the name and one over the port, a table lookup a byte.
fn is_valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host_ok, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else { return false };
            let inside = std::str::from_utf8(&rest[..end]).ok();
            let address = inside.is_some_and(|i| i.parse::<std::net::Ipv6Addr>().is_ok());
            match &rest[end + 1..] {
                [] => (address, None),
                [b':', port @ ..] => (address, Some(port)),
                _ => return false,
            }
        }
        None => match memchr::memchr(b':', value) {
            Some(i) => (is_reg_name(&value[..i]), Some(&value[i + 1..])),
            None => (is_reg_name(value), None),
        },
    };
    host_ok && port.is_none_or(is_port)
}

/// `1*DIGIT` up to 65535 (leading zeros allowed, RFC 9110 §4.1 `port = *DIGIT`; empty
/// refused: it names no port).
fn is_port(digits: &[u8]) -> bool {
    let mut n = 0u32;
    for &b in digits {
        if !b.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(b - b'0');
        if n > 65535 {
            return false;
        }
    }
    !digits.is_empty()
}

/// A non-empty registered name of the bytes hosts use, percent-escapes well-formed.
fn is_reg_name(name: &[u8]) -> bool {
    let mut escaped = false;
    for &b in name {
        match HOST_BYTE[usize::from(b)] {
            NAME => {}
            PERCENT => escaped = true,
            _ => return false,
        }
    }
    !name.is_empty() && (!escaped || escapes_are_well_formed(name))
}

/// Each `%` is followed by two hex digits (the rare, slow path).
fn escapes_are_well_formed(name: &[u8]) -> bool {
    name.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| name.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
}

/// [`HOST_BYTE`] classes.
const INVALID: u8 = 0;
const NAME: u8 = 1;
const PERCENT: u8 = 2;

/// What each byte may be in a host name: letters, digits, `-`, `.`, `_`, `~`, or `%`.
static HOST_BYTE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            table[b] = NAME;
        }
        b += 1;
    }
    table[b'%' as usize] = PERCENT;
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, method: &str, target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version).method(method).uri(target);
        for h in hosts {
            builder = builder.header("host", *h);
        }
        builder.body(()).unwrap()
    }

    fn host_of(r: &Request<()>) -> Result<Option<String>, HostError> {
        request_host(r).map(|h| h.map(|h| h.to_str().unwrap().to_owned()))
    }

    #[test]
    fn hosts_and_targets_that_are_refused() {
        let h11 = Version::HTTP_11;
        let host_lines: [(&[&str], &str); 13] = [
            (&[], "no Host"),
            (&["a", "a"], "two equal Hosts"),
            (&["a, b"], "a list"),
            (&["a b"], "a blank"),
            (&["a/../b"], "a path"),
            (&["a:"], "an empty port"),
            (&["a:65536"], "a port over 65535"),
            (&[":80"], "no host before the port"),
            (&["[::1"], "an unclosed IP literal"),
            (&["[nope]"], "not an IPv6 address"),
            (&["a%2"], "a cut-short escape"),
            (&["a%zz"], "an escape that is not hex"),
            (&["a:8 0"], "a blank in the port"),
        ];
        let by_host = host_lines.into_iter().map(|(hosts, why)| (req(h11, "GET", "/", hosts), why));
        let by_target = [
            (req(h11, "GET", "a", &["a"]), "authority-form for GET"),
            (req(h11, "GET", "*", &["a"]), "* for GET"),
            (req(h11, "GET", "http://a/", &[]), "absolute-form still needs Host in HTTP/1.1"),
            (req(h11, "GET", "http://a:99999/x", &["ok"]), "absolute-form with a port over 65535"),
            (req(h11, "GET", "http://a:/x", &["ok"]), "absolute-form with an empty port"),
            (req(h11, "GET", "http://a,b/x", &["ok"]), "absolute-form with a list for a host"),
            (req(h11, "GET", "ftp://a/x", &["ok"]), "absolute-form that is not http"),
            (req(Version::HTTP_2, "GET", "http://a:99999/x", &[]), ":authority with a port over 65535"),
            (req(Version::HTTP_2, "GET", "http://a/", &["b"]), ":authority and Host disagree"),
        ];
        for (r, why) in by_host.chain(by_target) {
            assert!(request_host(&r).is_err(), "{why}: {r:?}");
        }
    }

    #[test]
    fn the_host_a_request_is_for() {
        let h11 = Version::HTTP_11;
        let host_lines = [
            ("Example.com:8080", "Example.com:8080"),
            ("[::1]:8080", "[::1]:8080"),
            ("10.0.0.1", "10.0.0.1"),
            ("a%2Eb:65535", "a%2Eb:65535"),
            ("a:000080", "a:000080"),
            ("", ""),
        ];
        let by_host = host_lines.map(|(host, want)| (req(h11, "GET", "/x", &[host]), Some(want)));
        let others = [
            (req(h11, "GET", "http://target:81/x", &["ignored"]), Some("target:81")),
            (req(h11, "GET", "http://user@target/x", &["ignored"]), Some("target")),
            (req(h11, "OPTIONS", "*", &["a"]), Some("a")),
            (req(Version::HTTP_10, "GET", "/x", &[]), None),
            (req(Version::HTTP_2, "GET", "http://a/x", &["A"]), Some("a")),
            (req(Version::HTTP_2, "GET", "http://a/x", &[]), Some("a")),
        ];
        let cases = by_host.into_iter().chain(others);
        for (r, want) in cases {
            assert_eq!(host_of(&r), Ok(want.map(str::to_owned)), "{r:?}");
        }
    }
}
