//! The routing table: which upstream service a request goes to, and which
//! consumers may call it.

use std::collections::BTreeSet;

use crate::envelope::{Binding, InvalidBinding, canonical_target};
use crate::identity::ServiceId;

/// One route: requests whose path is under `prefix` go to `upstream`.
///
/// ```
/// use trustwire::ServiceId;
/// use trustwire::http::gateway::Route;
///
/// let orders = Route::new("/orders", ServiceId::new("orders")?)?
///     .methods(["GET", "POST"])
///     .consumers(["acme"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    prefix: String,
    upstream: ServiceId,
    methods: BTreeSet<String>,
    consumers: Option<BTreeSet<String>>,
}

impl Route {
    /// A route for every path under `prefix` (canonicalised like `htu`, and
    /// matched on whole segments: `/orders` matches `/orders` and
    /// `/orders/42` but not `/orders-archive`), any method and any consumer.
    pub fn new(prefix: &str, upstream: ServiceId) -> Result<Self, InvalidBinding> {
        let mut prefix = canonical_target(prefix)?;
        if let Some(query) = prefix.find('?') {
            prefix.truncate(query);
        }
        Ok(Self {
            prefix,
            upstream,
            methods: BTreeSet::new(),
            consumers: None,
        })
    }

    /// Restricts the route to these methods. Default: any method.
    pub fn methods(mut self, methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Allows only these consumers; others get 403 `not_allowed`. Default:
    /// every authenticated consumer.
    pub fn consumers(mut self, consumers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.consumers = Some(consumers.into_iter().map(Into::into).collect());
        self
    }

    /// The upstream service, the `aud` of the tokens minted for this route.
    pub fn upstream(&self) -> &ServiceId {
        &self.upstream
    }

    /// The canonical path prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `consumer` may call this route.
    pub(crate) fn allows(&self, consumer: &str) -> bool {
        self.consumers
            .as_ref()
            .is_none_or(|consumers| consumers.contains(consumer))
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if self.prefix == "/" || self.prefix.ends_with('/') {
            return path.starts_with(&self.prefix);
        }
        match path.strip_prefix(&self.prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Finds the route with the longest matching prefix for an HTTP binding.
pub(crate) fn find<'r>(routes: &'r [Route], binding: &Binding) -> Option<&'r Route> {
    let Binding::Http { method, target } = binding else {
        return None;
    };
    let path = target.split('?').next().unwrap_or("");
    routes
        .iter()
        .filter(|route| route.matches(method, path))
        .max_by_key(|route| route.prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str) -> Route {
        Route::new(prefix, ServiceId::new(upstream).unwrap()).unwrap()
    }

    fn upstream_of(routes: &[Route], method: &str, target: &str) -> Option<String> {
        let binding = Binding::http(method, target).unwrap();
        find(routes, &binding).map(|route| route.upstream().to_string())
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = [
            route("/", "web"),
            route("/orders", "orders"),
            route("/orders/admin", "admin"),
        ];
        assert_eq!(upstream_of(&routes, "GET", "/orders/admin/x").as_deref(), Some("admin"));
        assert_eq!(upstream_of(&routes, "GET", "/orders/42?x=1").as_deref(), Some("orders"));
        assert_eq!(upstream_of(&routes, "GET", "/orders").as_deref(), Some("orders"));
        assert_eq!(upstream_of(&routes, "GET", "/other").as_deref(), Some("web"));
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let routes = [route("/orders", "orders")];
        assert_eq!(upstream_of(&routes, "GET", "/orders-archive"), None);
    }

    #[test]
    fn prefix_canonicalised() {
        let routes = [route("/%7eusers", "users")];
        assert_eq!(upstream_of(&routes, "GET", "/~users/1").as_deref(), Some("users"));
    }

    #[test]
    fn methods_restrict_route() {
        let routes = [route("/orders", "orders").methods(["GET"])];
        assert_eq!(upstream_of(&routes, "DELETE", "/orders/1"), None);
        assert_eq!(upstream_of(&routes, "GET", "/orders/1").as_deref(), Some("orders"));
    }

    #[test]
    fn consumers_restrict_route() {
        let restricted = route("/orders", "orders").consumers(["acme"]);
        assert!(restricted.allows("acme"));
        assert!(!restricted.allows("globex"));
        assert!(route("/orders", "orders").allows("globex"));
    }
}
