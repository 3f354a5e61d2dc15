//! Routing: the first `[[route]]` whose host and path prefix match picks the upstream.

use crate::config::RouteConfig;

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

    /// The upstream index for a request to `host` (any case, port allowed) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
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
            .map(|r| r.upstream)
    }
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
        RouteConfig { host: host.map(str::to_owned), path_prefix: prefix.map(str::to_owned), upstream }
    }

    #[test]
    fn first_match_wins_and_port_is_ignored() {
        let routes = Routes::new(vec![
            route(Some("api.example.com"), Some("/v2/"), 0),
            route(Some("api.example.com"), None, 1),
            route(None, Some("/static/"), 2),
            route(None, None, 3),
        ]);
        assert_eq!(routes.find(Some("API.example.com:8443"), "/v2/x"), Some(0));
        assert_eq!(routes.find(Some("api.example.com"), "/v1/x"), Some(1));
        assert_eq!(routes.find(Some("other"), "/static/a.css"), Some(2));
        assert_eq!(routes.find(None, "/"), Some(3));
    }

    #[test]
    fn no_match_is_none() {
        let routes = Routes::new(vec![route(Some("a.example"), None, 0)]);
        assert_eq!(routes.find(Some("b.example"), "/"), None);
        assert_eq!(routes.find(None, "/"), None);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
