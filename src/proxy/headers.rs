//! Header rewriting between the client and the upstream: hop-by-hop headers stay on their
//! hop, and the upstream learns who the client was through `X-Forwarded-*`. Also what the
//! headers say about an upgrade (RFC 9110 §7.8). Request header names with `_` are dropped
//! unless the route keeps them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

use crate::http1;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `HTTP2-Settings`, and `Upgrade` unless `upgrade`
/// (an upgrade request or a 101 keeps `Upgrade` and `Connection: upgrade`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let present = scan(headers, false);
    strip_hop_by_hop(headers, present, upgrade);
}

/// What a request loses on its way upstream: its hop-by-hop headers (as
/// [`remove_hop_by_hop`]) and, unless `keep_underscores`, every header whose name contains `_`
/// — CGI-style backends read `X_Forwarded_For` as `X-Forwarded-For`, so a client could spoof
/// what lameduck sets (nginx drops them too). `dropped` is told each name dropped that way.
///
/// The names are looked at once for both; only a request that has such a name pays a second
/// pass to find which.
pub fn strip_request_headers(
    headers: &mut HeaderMap,
    upgrade: bool,
    keep_underscores: bool,
    dropped: impl FnMut(&HeaderName),
) {
    let present = scan(headers, !keep_underscores);
    if present & UNDERSCORE_BIT != 0 {
        remove_underscored(headers, dropped);
    }
    strip_hop_by_hop(headers, present, upgrade);
}

/// One pass over the names: which hop-by-hop headers are there (their bits) and, if
/// `underscores`, whether any name has a `_` ([`UNDERSCORE_BIT`]). Most messages carry none
/// of these, and a removal costs a hash lookup each.
fn scan(headers: &HeaderMap, underscores: bool) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name);
        if underscores && name.as_str().as_bytes().contains(&b'_') {
            present |= UNDERSCORE_BIT;
        }
    }
    present
}

fn strip_hop_by_hop(headers: &mut HeaderMap, present: u16, upgrade: bool) {
    if present & CONNECTION_BIT != 0 {
        let mut connection = headers.get_all(header::CONNECTION).iter();
        let first = connection.next().map(HeaderValue::as_bytes);
        // The common cases name nothing else; any other value (or a second line) is parsed.
        let plain = matches!(first, Some(b"keep-alive" | b"close"));
        if !plain || connection.next().is_some() {
            remove_named_by_connection(headers);
        }
        headers.remove(header::CONNECTION);
    }
    for (bit, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << bit) != 0 && (*name != header::UPGRADE || !upgrade) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn remove_underscored(headers: &mut HeaderMap, mut dropped: impl FnMut(&HeaderName)) {
    let names: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().as_bytes().contains(&b'_')).cloned().collect();
    for name in names {
        dropped(&name);
        headers.remove(&name);
    }
}

/// The hop-by-hop headers besides `Connection`; a header's index is its bit in the set
/// [`scan`] collects.
static HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // RFC 9113 §3.1: only for the obsolete h2c upgrade, which never reaches a backend.
    HeaderName::from_static("http2-settings"),
];

const CONNECTION_BIT: u16 = 1 << 7;

/// Set by [`scan`] when a header name contains `_`.
const UNDERSCORE_BIT: u16 = 1 << 8;

fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    if *name == header::CONNECTION {
        return CONNECTION_BIT;
    }
    HOP_BY_HOP.iter().position(|hop| hop == name).map_or(0, |i| 1 << i)
}

/// Removes what `Connection` names, except what the proxy itself needs or sets: `Upgrade`
/// (judged apart), `Host` and `X-Forwarded-*` — a client could otherwise strip the host a
/// backend routes on, or earlier hops' `X-Forwarded-For`.
fn remove_named_by_connection(headers: &mut HeaderMap) {
    let kept = [&header::UPGRADE, &header::HOST, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST];
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| http1::connection_tokens(v.as_bytes()))
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .filter(|name| !kept.contains(&name))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// True for an HTTP/1.1 request that asks to switch protocols: an `Upgrade` header, and
/// `Connection` naming `upgrade` (RFC 9110 §7.8).
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && http1::connection_has(
            req.headers().get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes),
            "upgrade",
        )
}

/// The protocols of the request's `Upgrade` that `allowed` lets through, as the `Upgrade`
/// value to send upstream; `None` when there is none (then the request goes upstream as an
/// ordinary one, `Upgrade` removed as hop-by-hop). An allowed entry without `/` matches every
/// version of its protocol; `h2c` is never let through (RFC 9113 §3.1).
pub fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let mut kept = Vec::new();
    for protocol in
        headers.get_all(header::UPGRADE).iter().flat_map(|v| http1::connection_tokens(v.as_bytes()))
    {
        let name = protocol_name(protocol);
        let lets_through = allowed.iter().any(|a| {
            let a = a.as_bytes();
            a.eq_ignore_ascii_case(protocol) || (!a.contains(&b'/') && a.eq_ignore_ascii_case(name))
        });
        if lets_through && !name.eq_ignore_ascii_case(b"h2c") {
            if !kept.is_empty() {
                kept.extend_from_slice(b", ");
            }
            kept.extend_from_slice(protocol);
        }
    }
    (!kept.is_empty()).then(|| HeaderValue::from_bytes(&kept).expect("tokens of a header value"))
}

/// The name of an `Upgrade` protocol token, its `/version` left off (RFC 9110 §7.8).
fn protocol_name(protocol: &[u8]) -> &[u8] {
    protocol.split(|&b| b == b'/').next().unwrap_or_default()
}

/// Whether a `101`'s `Upgrade` names exactly one protocol, one the request asked for in
/// `asked` (RFC 9110 §15.2.2: the server switches to a protocol the client listed).
pub fn switched_as_asked(response: &HeaderMap, asked: &HeaderValue) -> bool {
    let mut chosen =
        response.get_all(header::UPGRADE).iter().flat_map(|v| http1::connection_tokens(v.as_bytes()));
    let (Some(protocol), None) = (chosen.next(), chosen.next()) else { return false };
    http1::connection_tokens(asked.as_bytes()).any(|a| a.eq_ignore_ascii_case(protocol))
}

/// Whether a WebSocket upgrade may go on for its `Origin` (RFC 6455 §10.2): always when the
/// route lists no origins; else only when the request's `Origin` is one of `listed`
/// (lowercase), compared without case. Upgrades to other protocols are not judged here.
pub fn origin_allowed(headers: &HeaderMap, asked: &HeaderValue, listed: Option<&[String]>) -> bool {
    let Some(listed) = listed else { return true };
    let websocket = http1::connection_tokens(asked.as_bytes())
        .any(|p| protocol_name(p).eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return true;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (origins.next(), origins.next()) else { return false };
    listed.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(origin.as_bytes().trim_ascii()))
}

/// True if a `101` response switched to WebSocket (RFC 6455 §4.2.2).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The client's address as it appears in `X-Forwarded-For` (IPv4-mapped IPv6 shown as IPv4);
/// computed once per connection.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    match client.to_canonical() {
        // Written by hand: `Display` for an address costs more than the rest of accepting.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    text[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
        }
        v6 => HeaderValue::from_str(&v6.to_string()).expect("an IP address is a valid header value"),
    }
}

/// Appends the client's address to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the latter from the host the client asked for, if any).
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool, host: Option<&HeaderValue>) {
    match headers.entry(&X_FORWARDED_FOR) {
        // Earlier hops' lines are joined into one, with the client last.
        header::Entry::Occupied(mut earlier) => {
            let mut joined = Vec::with_capacity(64);
            for value in earlier.iter().filter(|v| !v.is_empty()) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            earlier
                .insert(HeaderValue::from_bytes(&joined).expect("joined from valid header bytes and an IP"));
        }
        header::Entry::Vacant(none) => {
            none.insert(client.clone());
        }
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn headers_named_by_a_second_connection_line_are_removed() {
        let mut h =
            map(&[("connection", "close"), ("connection", "x-secret"), ("x-secret", "1"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key("connection"), "{h:?}");
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    /// Strips `h` as a request (no upgrade), returning the names dropped for their `_`.
    fn strip_request(h: &mut HeaderMap, keep_underscores: bool) -> Vec<String> {
        let mut dropped = Vec::new();
        strip_request_headers(h, false, keep_underscores, |name| dropped.push(name.to_string()));
        dropped.sort();
        dropped
    }

    #[test]
    fn request_header_names_with_underscores_are_dropped() {
        let mut h = map(&[
            ("x_forwarded_for", "evil"),
            ("x_custom", "1"),
            ("x_custom", "2"),
            ("_", "x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-custom", "kept"),
            ("connection", "keep-alive"),
        ]);
        assert_eq!(strip_request(&mut h, false), ["_", "x_custom", "x_forwarded_for"]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-custom"], "kept");
        // What lameduck adds afterwards is its own, and intact.
        add_forwarded(&mut h, &client_ip_value("192.0.2.7".parse().unwrap()), false, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
    }

    #[test]
    fn request_header_names_with_underscores_are_kept_when_the_route_says_so() {
        let mut h = map(&[("x_forwarded_for", "evil"), ("x_custom", "1"), ("keep-alive", "timeout=5")]);
        assert!(strip_request(&mut h, true).is_empty());
        assert_eq!(h["x_forwarded_for"], "evil");
        assert_eq!(h["x_custom"], "1");
        assert!(!h.contains_key("keep-alive"), "hop-by-hop headers still go: {h:?}");
    }

    #[test]
    fn upgrade_requests_lose_underscored_names_and_keep_upgrade() {
        let mut h =
            map(&[("connection", "Upgrade, x_hop"), ("upgrade", "websocket"), ("x_hop", "1"), ("x_a", "1")]);
        let mut dropped = Vec::new();
        strip_request_headers(&mut h, true, false, |name| dropped.push(name.clone()));
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn responses_keep_underscored_names() {
        let mut h = map(&[("x_backend", "1"), ("keep-alive", "timeout=5")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x_backend"], "1");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-host", "spoofed")]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(&mut h, &client_ip_value("192.0.2.7".parse().unwrap()), false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn several_forwarded_for_lines_are_joined() {
        let mut h =
            map(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", ""), ("x-forwarded-for", "10.0.0.2")]);
        add_forwarded(&mut h, &client_ip_value("192.0.2.7".parse().unwrap()), false, None);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.0.0.1, 10.0.0.2, 192.0.2.7"]
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in ["0.0.0.0", "1.2.3.4", "10.20.30.40", "100.200.255.9", "255.255.255.255", "2001:db8::7"] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(client_ip_value(addr), addr.to_string(), "{ip}");
        }
    }

    #[test]
    fn mapped_ipv4_is_shown_as_ipv4() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client_ip_value("::ffff:192.0.2.7".parse().unwrap()), true, None);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_allowed_upgrade_protocols_go_upstream_and_never_h2c() {
        let websocket = allowed(&["websocket"]);
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [String], Option<&'a str>);
        let cases: [Case; 6] = [
            (&[("upgrade", "WebSocket")], &websocket, Some("WebSocket")),
            (&[("upgrade", "h2c")], &websocket, None),
            (&[("upgrade", "h2c, websocket")], &websocket, Some("websocket")),
            (&[("upgrade", "x-custom/2")], &websocket, None),
            (
                &[("upgrade", "x-custom/2"), ("upgrade", "websocket")],
                &allowed(&["websocket", "x-custom"]),
                Some("x-custom/2, websocket"),
            ),
            (&[("upgrade", "h2c")], &allowed(&["h2c"]), None),
        ];
        for (request, allow, want) in cases {
            let got = allowed_upgrade(&map(request), allow);
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), want, "{request:?} with {allow:?}");
        }
        let exact = allowed(&["x-custom/1"]);
        assert!(allowed_upgrade(&map(&[("upgrade", "x-custom/2")]), &exact).is_none(), "a version is exact");
    }

    #[test]
    fn a_101_must_switch_to_one_protocol_that_was_asked_for() {
        let asked = HeaderValue::from_static("websocket, x-custom");
        assert!(switched_as_asked(&map(&[("upgrade", "WebSocket")]), &asked));
        assert!(!switched_as_asked(&map(&[("upgrade", "h2c")]), &asked));
        assert!(!switched_as_asked(&map(&[]), &asked), "a 101 naming nothing");
        assert!(!switched_as_asked(&map(&[("upgrade", "websocket, x-custom")]), &asked), "two at once");
    }

    #[test]
    fn http2_settings_never_goes_upstream() {
        let mut h = map(&[("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut h, true);
        assert!(!h.contains_key("http2-settings"), "{h:?}");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn websocket_upgrades_need_a_listed_origin_when_the_route_lists_some() {
        let listed = allowed(&["https://app.example.com"]);
        let ws = HeaderValue::from_static("websocket");
        let from = |origin: Option<&str>| map(&origin.map(|o| vec![("origin", o)]).unwrap_or_default());
        assert!(origin_allowed(&from(Some("https://APP.example.com")), &ws, Some(&listed)));
        assert!(!origin_allowed(&from(Some("https://evil.example")), &ws, Some(&listed)));
        assert!(!origin_allowed(&from(None), &ws, Some(&listed)), "no Origin at all");
        assert!(origin_allowed(&from(Some("https://evil.example")), &ws, None), "no list, no check");
        let versioned = HeaderValue::from_static("websocket/13");
        assert!(!origin_allowed(&from(None), &versioned, Some(&listed)), "a version does not skip the check");
        let other = HeaderValue::from_static("x-custom");
        assert!(origin_allowed(&from(None), &other, Some(&listed)), "only WebSocket upgrades are judged");
    }

    #[test]
    fn connection_cannot_strip_host_or_forwarded_headers() {
        let mut h = map(&[
            ("connection", "Host, X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, x-secret"),
            ("host", "app.example.com"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-secret", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "app.example.com");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1", "earlier hops stay");
        assert!(!h.contains_key("x-secret") && !h.contains_key("connection"), "{h:?}");
    }
}
