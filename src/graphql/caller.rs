//! Who is calling and whether to serve them: the client's address behind trusted proxies,
//! and the admission of one GraphQL operation, the same over HTTP and over a WebSocket.

use std::net::IpAddr;

use actix_web::HttpRequest;
use actix_web::http::header;
use ipnet::IpNet;

use crate::auth::Identity;
use crate::auth::identity::{self, Credentials};
use crate::error::{AppError, AppResult};
use crate::ratelimit::address_key;
use crate::state::{AppState, ClientInfo};

pub fn client_info(req: &HttpRequest, trusted_proxies: &[IpNet]) -> ClientInfo {
    let peer = req
        .peer_addr()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    ClientInfo {
        ip: client_address(peer, &forwarded, trusted_proxies),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Walks the chain from the socket peer back through `X-Forwarded-For` (right to left) while
/// the hop is a trusted proxy: the first untrusted address is the client. A client can put
/// anything at the left of the header, but not to the right of what its proxy appended.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    for hop in forwarded_for.iter().rev() {
        if !is_trusted(&client) {
            break;
        }
        match parse_hop(hop) {
            Some(ip) => client = ip,
            // Garbage where an address should be: the last proxy's word is all we have.
            None => break,
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// Admits one operation: counts it against the caller's limits and judges the caller by
/// its current state. Known worker nodes are limited per node, everyone else per address,
/// signed-in users also per user.
pub async fn admit(
    state: &AppState,
    credentials: &Credentials,
    client: &ClientInfo,
) -> AppResult<Identity> {
    let node = match credentials {
        Credentials::Node { token_hash } => state.heartbeats.known_node(token_hash),
        _ => None,
    };
    match node {
        Some(node_id) => state.limits.per_node.hit(&node_id),
        None => state.limits.per_ip.hit(&address_key(client.ip)),
    }
    .map_err(AppError::rate_limited)?;
    let identity = identity::judge(state, credentials).await?;
    if let Identity::User(actor) = &identity {
        state
            .limits
            .per_user
            .hit(&actor.user_id)
            .map_err(AppError::rate_limited)?;
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &["1.1.1.1"], &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("203.0.113.9"), &[], &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client wrote "6.6.6.6" itself; its proxy appended the real address.
        let chain = ["6.6.6.6", " 198.51.100.7", "10.1.1.1"];
        assert_eq!(
            client_address(ip("127.0.0.1"), &chain, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        // Only trusted hops: the left-most one is as far as we can see.
        assert_eq!(
            client_address(ip("127.0.0.1"), &["10.2.2.2"], &trusted),
            ip("10.2.2.2")
        );
        // Garbage stops the walk at the last proxy.
        assert_eq!(
            client_address(ip("127.0.0.1"), &["1.2.3.4", "nonsense"], &trusted),
            ip("127.0.0.1")
        );
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), &["192.0.2.1"], &trusted),
            ip("192.0.2.1")
        );
    }
}
