//! Pure transformations of requests and their headers, shared by both
//! directions: no IO, no state, each tested from examples below.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Uri};
use trellis_core::addr::OrigDstAddr;

use crate::mesh::ORIG_PROTO;

/// Replaces the request's path by its normal form ([`crate::path`]),
/// keeping the query. `CONNECT` (authority-form) and `OPTIONS *` have no
/// path to normalise.
pub fn normalize_request_path<B>(req: &mut Request<B>) -> Result<(), crate::path::PathError> {
    if req.method() == Method::CONNECT || req.uri().path() == "*" {
        return Ok(());
    }
    let uri = req.uri();
    let normal = match crate::path::normalize(uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(p) => p,
    };
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| crate::path::PathError::BadEscape)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| crate::path::PathError::BadEscape)?;
    Ok(())
}

/// Removes an offer to switch to HTTP/2 in clear text (`Upgrade: h2c`,
/// with its `HTTP2-Settings`): the proxy never tunnels it, because what
/// would follow is a whole connection of requests that nobody authorized.
/// Other protocols offered beside it stay.
pub fn strip_h2c_upgrade(headers: &mut HeaderMap) {
    const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
    // Most requests offer no upgrade at all: one pass over the names.
    let offered = headers
        .keys()
        .any(|k| k == header::UPGRADE || *k == HTTP2_SETTINGS);
    if !offered {
        return;
    }
    headers.remove(&HTTP2_SETTINGS);
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return;
    };
    let Ok(offered) = upgrade.to_str() else {
        headers.remove(header::UPGRADE);
        return;
    };
    let rest: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    if rest.len() == offered.split(',').filter(|p| !p.trim().is_empty()).count() {
        return;
    }
    match HeaderValue::from_str(&rest.join(", ")) {
        Ok(v) if !rest.is_empty() => {
            headers.insert(header::UPGRADE, v);
        }
        _ => {
            headers.remove(header::UPGRADE);
            // Without an Upgrade, `Connection: upgrade` asks for nothing.
            let tokens: Vec<String> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case("upgrade")
                        && !t.eq_ignore_ascii_case(HTTP2_SETTINGS.as_str())
                })
                .map(str::to_owned)
                .collect();
            headers.remove(header::CONNECTION);
            if let Ok(v) = HeaderValue::from_str(&tokens.join(", ")) {
                if !tokens.is_empty() {
                    headers.insert(header::CONNECTION, v);
                }
            }
        }
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host
/// header (HTTP/1).
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Prepares an application request for the mesh: HTTP/2 to the peer
/// proxy. An HTTP/1 request gets an absolute URI (authority from its Host
/// header) and says so in `trellis-orig-proto`, so the peer hands it to its
/// application as HTTP/1 again.
pub fn into_mesh_request<B>(req: &mut Request<B>, client_h1: bool, dst: &Authority) {
    req.headers_mut().remove(ORIG_PROTO);
    if !client_h1 {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| dst.clone());
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if let Ok(uri) = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
}

/// Undoes [`into_mesh_request`] on the receiving side. Returns whether the
/// application speaks HTTP/1.
pub fn from_mesh_request<B>(req: &mut Request<B>) -> bool {
    let Some(orig) = req.headers_mut().remove(ORIG_PROTO) else {
        return false;
    };
    if orig.as_bytes() != b"HTTP/1.1" {
        return false;
    }
    *req.version_mut() = http::Version::HTTP_11;
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    true
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `Upgrade` (WebSocket over HTTP/1.1) and `CONNECT` become byte tunnels.
pub fn wants_tunnel<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() <= http::Version::HTTP_11
            && req.headers().contains_key(header::UPGRADE)
            && connection_has(req.headers(), "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Headers meaningful only for one hop (RFC 9110 §7.6.1): those the
/// `Connection` header names, and the fixed list below. `TE: trailers`
/// survives (gRPC needs it end to end).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them (or only `TE: trailers`): one pass
    // over the names instead of eight lookups and removals.
    let any = headers.iter().any(|(name, value)| {
        if name == header::TE {
            return value.as_bytes() != b"trailers";
        }
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::TRAILER
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
    });
    if !any {
        return;
    }
    const FIXED: [HeaderName; 6] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
    ];
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(FIXED.iter()) {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A socket address as an authority (for upstream HTTP/1 URIs).
pub fn socket_authority(addr: OrigDstAddr) -> Authority {
    // A socket address always renders as a valid authority.
    Authority::try_from(addr.to_string()).unwrap_or_else(|_| Authority::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end-to-end"]);
        assert_eq!(h[header::TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty());

        // The fast path (nothing to remove) leaves what the full pass
        // would: `TE: trailers` alone, and end-to-end headers.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A second TE value is not `trailers` alone: the full pass runs.
        h.append(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.get_all(header::TE).iter().count(), 1);
        assert_eq!(h[header::TE], "trailers");
        let mut h = HeaderMap::new();
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn h2c_upgrades_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings, keep-alive"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        strip_h2c_upgrade(&mut h);
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get("http2-settings").is_none());
        assert_eq!(h[header::CONNECTION], "keep-alive");
        let req = {
            let mut r = Request::get("/healthz").body(()).unwrap();
            *r.headers_mut() = h;
            r
        };
        assert!(!wants_tunnel(&req));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C, websocket"));
        strip_h2c_upgrade(&mut h);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_h2c_upgrade(&mut h);
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn request_paths_are_normalised_with_their_query() {
        let mut req = Request::get("/api/%2e%2e/admin?x=1").body(()).unwrap();
        normalize_request_path(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "/admin?x=1");
        let mut h2 = Request::get("http://web:80/a/./b").body(()).unwrap();
        normalize_request_path(&mut h2).unwrap();
        assert_eq!(h2.uri().to_string(), "http://web:80/a/b");
        let mut bad = Request::get("/api/..%2fadmin").body(()).unwrap();
        assert!(normalize_request_path(&mut bad).is_err());
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        normalize_request_path(&mut connect).unwrap();
    }

    #[test]
    fn tunnels_are_upgrade_or_connect() {
        let ws = Request::get("/ws")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&ws));
        let no_conn = Request::get("/")
            .header(header::UPGRADE, "h2c")
            .body(())
            .unwrap();
        assert!(!wants_tunnel(&no_conn));
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&connect));
    }

    #[test]
    fn http1_requests_cross_the_mesh_and_come_back_as_http1() {
        let dst: Authority = "10.96.0.1:80".parse().unwrap();
        let mut req = Request::get("/a?b=c")
            .header(header::HOST, "web.demo.svc.cluster.local")
            .header(ORIG_PROTO, "spoofed")
            .body(())
            .unwrap();
        into_mesh_request(&mut req, true, &dst);
        assert_eq!(req.version(), http::Version::HTTP_2);
        assert_eq!(
            req.uri().to_string(),
            "http://web.demo.svc.cluster.local/a?b=c"
        );
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");
        assert!(from_mesh_request(&mut req));
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert_eq!(req.headers()[header::HOST], "web.demo.svc.cluster.local");
        assert!(req.headers().get(ORIG_PROTO).is_none());

        // HTTP/2 from the application stays HTTP/2, and a client cannot
        // smuggle the header through.
        let mut h2 = Request::get("http://api/x")
            .header(ORIG_PROTO, "HTTP/1.1")
            .body(())
            .unwrap();
        into_mesh_request(&mut h2, false, &dst);
        assert!(h2.headers().get(ORIG_PROTO).is_none());
        assert!(!from_mesh_request(&mut h2));
    }

    #[test]
    fn grpc_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(14));
    }
}
