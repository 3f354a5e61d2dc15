//! Routing: the first `[[route]]` whose host and path prefix match picks the upstream and how
//! the request is rewritten for it.

use crate::config::{Forwarding, RouteConfig};

/// The routing table, in config order.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<RouteConfig>,
}

impl Routes {
    /// A table of `routes`, tried in order.
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Routes { routes }
    }

    /// The route for a request to `host` (any case, port allowed) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Route<'_>> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| {
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                };
                host_ok && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            })
            .map(|r| Route { upstream: r.upstream, forwarding: &r.forwarding })
    }
}

/// What routing decided for one request: borrowed from the table, so nothing is copied.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// Index into the proxy's upstreams.
    pub upstream: usize,
    /// How the request is rewritten for that upstream.
    pub forwarding: &'a Forwarding,
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: Option<&str>, upstream: usize) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            upstream,
            forwarding: Forwarding::default(),
        }
    }

    fn upstream(routes: &Routes, host: Option<&str>, path: &str) -> Option<usize> {
        routes.find(host, path).map(|r| r.upstream)
    }

    #[test]
    fn first_match_wins_and_port_is_ignored() {
        let routes = Routes::new(vec![
            route(Some("api.example.com"), Some("/v2/"), 0),
            route(Some("api.example.com"), None, 1),
            route(None, Some("/static/"), 2),
            route(None, None, 3),
        ]);
        assert_eq!(upstream(&routes, Some("API.example.com:8443"), "/v2/x"), Some(0));
        assert_eq!(upstream(&routes, Some("api.example.com"), "/v1/x"), Some(1));
        assert_eq!(upstream(&routes, Some("other"), "/static/a.css"), Some(2));
        assert_eq!(upstream(&routes, None, "/"), Some(3));
    }

    #[test]
    fn the_matched_route_brings_its_forwarding_settings() {
        let keep = Forwarding { underscores_in_headers: true, ..Forwarding::default() };
        let routes = Routes::new(vec![
            RouteConfig { forwarding: keep.clone(), ..route(None, Some("/legacy/"), 0) },
            route(None, None, 0),
        ]);
        let legacy = routes.find(None, "/legacy/x").expect("routed");
        assert_eq!(legacy.forwarding, &keep);
        let other = routes.find(None, "/x").expect("routed");
        assert!(!other.forwarding.underscores_in_headers);
    }

    #[test]
    fn no_match_is_none() {
        let routes = Routes::new(vec![route(Some("a.example"), None, 0)]);
        assert_eq!(upstream(&routes, Some("b.example"), "/"), None);
        assert_eq!(upstream(&routes, None, "/"), None);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
