//! Bearer-token auth and client addresses, both decided before any upgrade so that a
//! refused client never starts a tree.

use std::net::IpAddr;

use actix_web::HttpRequest;

use crate::config::Config;

/// True when auth is off, or the request carries a configured token in the
/// `Authorization: Bearer` header or the `token` query parameter.
pub fn authorised(req: &HttpRequest, query_token: Option<&str>, config: &Config) -> bool {
    let tokens = &config.auth.tokens;
    if tokens.is_empty() {
        return true;
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let offered = header.or(query_token);
    offered.is_some_and(|offered| {
        tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), offered.as_bytes()))
    })
}

/// Compare without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most untrusted address of `X-Forwarded-For`.
pub fn client_ip(req: &HttpRequest, config: &Config) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted = |ip: &IpAddr| {
        config
            .server
            .trusted_proxies
            .iter()
            .any(|t| t.parse::<IpAddr>().is_ok_and(|t| t == *ip))
    };
    if !trusted(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let Some(forwarded) = forwarded else {
        return Some(peer);
    };
    let hops: Vec<IpAddr> = forwarded
        .split(',')
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    Some(
        hops.iter()
            .rev()
            .find(|ip| !trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn config(tokens: &[&str]) -> Config {
        let mut config = Config::default();
        config.auth.tokens = tokens.iter().map(|t| t.to_string()).collect();
        config
    }

    #[test]
    fn tokens_from_header_or_query() {
        let config = config(&["s3cret"]);
        let req = TestRequest::default()
            .insert_header(("Authorization", "Bearer s3cret"))
            .to_http_request();
        assert!(authorised(&req, None, &config));
        let req = TestRequest::default().to_http_request();
        assert!(authorised(&req, Some("s3cret"), &config));
        assert!(!authorised(&req, Some("guess"), &config));
        assert!(!authorised(&req, None, &config));
        assert!(authorised(&req, None, &Config::default()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let config = Config::default();
        let via_proxy = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("X-Forwarded-For", "203.0.113.9, 127.0.0.1"))
            .to_http_request();
        assert_eq!(client_ip(&via_proxy, &config), "203.0.113.9".parse().ok());
        let direct = TestRequest::default()
            .peer_addr("198.51.100.7:5000".parse().unwrap())
            .insert_header(("X-Forwarded-For", "203.0.113.9"))
            .to_http_request();
        assert_eq!(client_ip(&direct, &config), "198.51.100.7".parse().ok());
    }
}
