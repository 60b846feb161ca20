//! `admin:`: the agent's admin listener (`/metrics`): its address and the bow secret that
//! holds its bearer token. An address off loopback without a token is refused: metrics name
//! every service, route and instance of the system.

use core::net::SocketAddr;

use crate::reader::{Reader, join};
use crate::schema::Admin;
use crate::yaml::Node;

use super::values::is_secret_name;
use super::{ADMIN_KEYS, defaults};

pub(super) fn admin(node: &Node, path: &str, reader: &mut Reader) -> Option<Admin> {
    let fields = reader.fields(
        node,
        path,
        "a mapping with listen and token_secret",
        ADMIN_KEYS,
    )?;
    let (ip, port) = defaults::ADMIN_LISTEN;
    let mut listen = SocketAddr::from((ip, port));
    let mut listen_node = None;
    if let Some((n, p)) = fields.get("listen") {
        let text = reader.nonempty(n, &p, "an address like 127.0.0.1:9100")?;
        match text.trim().parse::<SocketAddr>() {
            Ok(address) => {
                listen = address;
                listen_node = Some((n, p));
            }
            Err(_) => {
                reader.error(
                    &p,
                    n.span,
                    format!("expected an address like 127.0.0.1:9100, found {text:?}"),
                    Some(
                        "write ip:port (an IPv6 address in brackets: [::1]:9100); \
                         host names are not resolved"
                            .to_string(),
                    ),
                );
                return None;
            }
        }
    }
    let token_secret = match fields.get("token_secret") {
        Some((n, p)) => {
            let name = reader.nonempty(n, &p, "a secret name")?;
            if !is_secret_name(&name) {
                reader.error(
                    &p,
                    n.span,
                    format!(
                        "secret name {name:?} is not valid: expected letters, digits, `_` and `-`"
                    ),
                    None,
                );
                return None;
            }
            Some(name)
        }
        None => None,
    };
    if !listen.ip().is_loopback() && token_secret.is_none() {
        let (span, at) = match &listen_node {
            Some((n, p)) => (n.span, p.clone()),
            None => (node.span, join(path, "listen")),
        };
        reader.error(
            &at,
            span,
            format!(
                "the admin listener on {listen} is reachable from other hosts but has no token"
            ),
            Some(
                "add token_secret: admin_token (then `bow secret set admin_token`), \
                 or listen on 127.0.0.1"
                    .to_string(),
            ),
        );
        return None;
    }
    Some(Admin {
        listen,
        token_secret,
    })
}
