//! HTTP trigger routing, as Spin matches routes.
//!
//! A route is an exact path (`/api/generate`), a path with a trailing
//! wildcard (`/static/...`, which also matches `/static` itself), and may
//! have `:name` segments that match any one non-empty segment. When several
//! routes match, the most specific wins: comparing segment by segment, a
//! literal beats `:name`, which beats the trailing wildcard, and an exact
//! route beats a wildcard one with the same prefix. A trailing slash in the
//! request path is ignored for matching. Duplicate routes: the last one
//! declared wins, as in Spin.

use anyhow::{Result, bail, ensure};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// `:name` captures: segment index and value.
type Captures = Vec<(usize, String)>;

/// One route of the application.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route as written in spin.toml.
    raw: String,
    /// The route with the (always `/`) base applied: leading slash, one
    /// trailing slash removed (Spin's "based route").
    based: String,
    segments: Vec<Segment>,
    wildcard: bool,
    component: String,
}

/// The result of matching a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    /// `spin-matched-route`: the route with the base applied.
    pub based_route: &'a str,
    /// `spin-raw-component-route`: the route as written.
    pub raw_route: &'a str,
    /// `spin-component-route`: the raw route without a trailing `/...`.
    pub component_route: &'a str,
    /// `spin-path-info`: what the trailing wildcard matched (with its
    /// leading slash), or empty.
    pub path_info: String,
    /// `:name` captures, in route order.
    pub params: Vec<(&'a str, String)>,
}

impl Route {
    fn parse(raw: &str, component: &str) -> Result<Route> {
        // Spin: absolutize, then strip one trailing slash; the base is "/".
        let absolute = if raw.starts_with('/') {
            raw.to_string()
        } else {
            format!("/{raw}")
        };
        let based = absolute.strip_suffix('/').unwrap_or(&absolute).to_string();
        let (prefix, wildcard) = if let Some(p) = based.strip_suffix("/...") {
            (p, true)
        } else if let Some(p) = based.strip_suffix("/*") {
            (p, true)
        } else if based == "..." || based == "*" {
            ("", true)
        } else {
            (based.as_str(), false)
        };
        let mut segments = Vec::new();
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            if let Some(name) = seg.strip_prefix(':') {
                ensure!(
                    !name.is_empty(),
                    "route {raw:?}: a ':' segment needs a name"
                );
                segments.push(Segment::Param(name.to_string()));
            } else {
                ensure!(
                    seg != "..." && !seg.contains('*'),
                    "route {raw:?}: a wildcard may only come last"
                );
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(Route {
            raw: raw.to_string(),
            based,
            segments,
            wildcard,
            component: component.to_string(),
        })
    }

    /// The route's specificity key: lower is more specific.
    fn rank(&self) -> Vec<u8> {
        let mut key: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Param(_) => 1,
            })
            .collect();
        if self.wildcard {
            key.push(2);
        }
        key
    }

    /// Match `path` (the request path, no query). Returns the byte offset in
    /// `path` where the wildcard part starts, and the captures.
    fn matches(&self, path: &str) -> Option<(usize, Captures)> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let mut parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        // A trailing slash is ignored for matching.
        if parts.last() == Some(&"") {
            parts.pop();
        }
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut captures = Vec::new();
        let mut offset = if path.starts_with('/') { 1 } else { 0 };
        let mut end_of_prefix = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            let part = parts[i];
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Param(_) if !part.is_empty() => captures.push((i, part.to_string())),
                _ => return None,
            }
            offset += part.len();
            end_of_prefix = offset;
            offset += 1;
        }
        Some((end_of_prefix, captures))
    }
}

/// The application's router.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Build from `(route, component)` pairs in manifest order.
    pub fn build<'a>(triggers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Router> {
        let mut routes: Vec<Route> = Vec::new();
        for (raw, component) in triggers {
            let route = Route::parse(raw, component)?;
            if let Some(pos) = routes.iter().position(|r| r.raw == route.raw) {
                tracing::warn!(
                    "route {raw:?} of component {} is a duplicate of the one for {}, which will never be used",
                    component,
                    routes[pos].component
                );
                routes.remove(pos);
            }
            if route.based.starts_with("/.well-known/spin/") || route.based == "/.well-known/spin" {
                bail!(
                    "route {raw:?}: routes under /.well-known/spin/ are reserved for the runtime"
                );
            }
            routes.push(route);
        }
        Ok(Router { routes })
    }

    /// Routes in declaration order, for the startup listing.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes
            .iter()
            .map(|r| (r.raw.as_str(), r.component.as_str()))
    }

    /// The best route for a request path, or `None` (a 404).
    pub fn route<'a>(&'a self, path: &str) -> Option<RouteMatch<'a>> {
        let mut best: Option<(&Route, usize, Captures)> = None;
        for route in &self.routes {
            if let Some((offset, captures)) = route.matches(path) {
                let better = match &best {
                    None => true,
                    Some((b, _, _)) => route.rank() < b.rank(),
                };
                if better {
                    best = Some((route, offset, captures));
                }
            }
        }
        let (route, offset, captures) = best?;
        let path_info = if route.wildcard {
            path[offset..].to_string()
        } else {
            String::new()
        };
        let params = captures
            .into_iter()
            .map(|(i, value)| match &route.segments[i] {
                Segment::Param(name) => (name.as_str(), value),
                Segment::Literal(_) => unreachable!(),
            })
            .collect();
        Some(RouteMatch {
            component: &route.component,
            based_route: &route.based,
            raw_route: &route.raw,
            component_route: route.raw.strip_suffix("/...").unwrap_or(&route.raw),
            path_info,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::build(routes.iter().map(|(r, c)| (*r, *c))).unwrap()
    }

    fn component<'a>(r: &'a Router, path: &str) -> Option<&'a str> {
        r.route(path).map(|m| m.component)
    }

    #[test]
    fn exact() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar")]);
        assert_eq!(component(&r, "/foo"), Some("foo"));
        assert_eq!(component(&r, "/foo/"), Some("foo"));
        assert_eq!(component(&r, "/foo/bar"), Some("foobar"));
        assert_eq!(component(&r, "/foo/baz"), None);
        assert_eq!(component(&r, "/fo"), None);
        assert_eq!(component(&r, "/"), None);
    }

    #[test]
    fn root_and_catch_all() {
        let r = router(&[("/", "root")]);
        assert_eq!(component(&r, "/"), Some("root"));
        assert_eq!(component(&r, "/x"), None);
        let r = router(&[("/...", "all")]);
        for p in ["/", "/a", "/a/b/c", "/abc/"] {
            assert_eq!(component(&r, p), Some("all"), "{p}");
        }
        assert_eq!(r.route("/1/2/3").unwrap().path_info, "/1/2/3");
        assert_eq!(r.route("/").unwrap().path_info, "/");
    }

    #[test]
    fn longest_prefix_and_exact_win() {
        let r = router(&[
            ("/one/...", "one"),
            ("/one/two/three/...", "three"),
            ("/one/two/...", "two"),
            ("/one/two", "exact"),
            ("/...", "all"),
        ]);
        assert_eq!(component(&r, "/one/two/three/four"), Some("three"));
        assert_eq!(component(&r, "/one/two/x"), Some("two"));
        assert_eq!(component(&r, "/one/two"), Some("exact"));
        assert_eq!(component(&r, "/one"), Some("one"));
        assert_eq!(component(&r, "/onex"), Some("all"));
    }

    #[test]
    fn path_info_and_trailing_slash() {
        let r = router(&[("/test/...", "t")]);
        assert_eq!(r.route("/test").unwrap().path_info, "");
        assert_eq!(r.route("/test/").unwrap().path_info, "/");
        assert_eq!(r.route("/test/hello").unwrap().path_info, "/hello");
        assert_eq!(r.route("/test/hello/").unwrap().path_info, "/hello/");
        assert_eq!(component(&r, "/testing"), None);
        let m = r.route("/test/a").unwrap();
        assert_eq!(m.based_route, "/test/...");
        assert_eq!(m.raw_route, "/test/...");
        assert_eq!(m.component_route, "/test");
    }

    #[test]
    fn named_segments() {
        let r = router(&[
            ("/1/:two/3", "a"),
            ("/x/:id/...", "b"),
            ("/x/fixed/...", "c"),
        ]);
        let m = r.route("/1/2/3").unwrap();
        assert_eq!(m.component, "a");
        assert_eq!(m.params, vec![("two", "2".to_string())]);
        let m = r.route("/x/42/rest/of").unwrap();
        assert_eq!(m.component, "b");
        assert_eq!(m.params, vec![("id", "42".to_string())]);
        assert_eq!(m.path_info, "/rest/of");
        assert_eq!(component(&r, "/x/fixed/y"), Some("c"));
        assert_eq!(component(&r, "/1//3"), None);
    }

    #[test]
    fn duplicates_last_wins() {
        let r = router(&[("/foo", "first"), ("/foo", "second")]);
        assert_eq!(component(&r, "/foo"), Some("second"));
        assert_eq!(r.routes().count(), 1);
    }

    #[test]
    fn reserved_prefix_rejected() {
        assert!(Router::build([("/.well-known/spin/x", "c")]).is_err());
    }
}
