//! TLS passthrough by server name: the server name a TLS ClientHello asks for, read from
//! the connection's first bytes without terminating TLS (like nginx's `ssl_preread`). The
//! bytes read are sent on to the chosen service before anything else.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a client may take to send its ClientHello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes read looking for it (a ClientHello spans a few records at most).
const HELLO_MAX: usize = 64 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// The ClientHello asks for this name (lower case).
    Name(String),
    /// A ClientHello without a server name, or not TLS at all.
    Unnamed,
}

fn u16_at(data: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *data.get(at)?,
        *data.get(at + 1)?,
    ])))
}

/// The handshake bytes of the leading records (TLS record framing removed); `None` when the
/// bytes are not TLS handshake records.
fn handshake(data: &[u8], wanted: usize) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < wanted {
        if data.len() < at + 5 {
            return Some((out, false));
        }
        if data[at] != 0x16 || data[at + 1] != 3 {
            return None;
        }
        let length = u16_at(data, at + 3)?;
        if length == 0 || length > 16 * 1024 + 256 {
            return None;
        }
        let end = at + 5 + length;
        if data.len() < end {
            return Some((out, false));
        }
        out.extend_from_slice(&data[at + 5..end]);
        at = end;
    }
    Some((out, true))
}

/// The server name in a connection's first bytes.
pub(crate) fn server_name(data: &[u8]) -> Hello {
    // The handshake header first (type, 24-bit length), then the whole ClientHello.
    let Some((head, complete)) = handshake(data, 4) else {
        return Hello::Unnamed;
    };
    if !complete {
        return Hello::Incomplete;
    }
    if head[0] != 1 {
        return Hello::Unnamed;
    }
    let length = (usize::from(head[1]) << 16) | (usize::from(head[2]) << 8) | usize::from(head[3]);
    let Some((message, complete)) = handshake(data, 4 + length) else {
        return Hello::Unnamed;
    };
    if !complete {
        return Hello::Incomplete;
    }
    parse_hello(&message[4..4 + length]).map_or(Hello::Unnamed, Hello::Name)
}

fn parse_hello(hello: &[u8]) -> Option<String> {
    // version (2), random (32), session id, cipher suites, compression methods.
    let mut at = 34;
    at += 1 + usize::from(*hello.get(at)?);
    at += 2 + u16_at(hello, at)?;
    at += 1 + usize::from(*hello.get(at)?);
    let extensions_end = (at + 2 + u16_at(hello, at)?).min(hello.len());
    at += 2;
    while at + 4 <= extensions_end {
        let (kind, length) = (u16_at(hello, at)?, u16_at(hello, at + 2)?);
        let body = hello.get(at + 4..at + 4 + length)?;
        at += 4 + length;
        if kind != 0 {
            continue;
        }
        // server_name_list: (type 1, length 2, name)…
        let mut entry = 2;
        while entry + 3 <= body.len() {
            let size = u16_at(body, entry + 1)?;
            let name = body.get(entry + 3..entry + 3 + size)?;
            if body[entry] == 0 {
                let name = std::str::from_utf8(name).ok()?;
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                return ok.then(|| name.trim_end_matches('.').to_ascii_lowercase());
            }
            entry += 3 + size;
        }
        return None;
    }
    None
}

/// Reads from `io` until the ClientHello is in (`read` holds what was read); `None` when the
/// client sent something else, went quiet for [`HELLO_TIMEOUT`] or closed.
pub(crate) async fn read_server_name<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut Vec<u8>,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut buffer = [0u8; 4096];
    loop {
        match server_name(read) {
            Hello::Name(name) => return Some(name),
            Hello::Unnamed => return None,
            Hello::Incomplete if read.len() >= HELLO_MAX => return None,
            Hello::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&buffer[..n]),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The ClientHello rustls sends for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        connection.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_name_is_read_from_a_real_client_hello_at_any_split() {
        let hello = client_hello("DB.Example.com");
        assert_eq!(server_name(&hello), Hello::Name("db.example.com".into()));
        for cut in [0, 1, 4, 5, 9, hello.len() / 2, hello.len() - 1] {
            assert_eq!(
                server_name(&hello[..cut]),
                Hello::Incomplete,
                "cut at {cut}"
            );
        }
        // The same hello split over two records.
        let body = &hello[5..];
        let (first, second) = body.split_at(40);
        let mut split = Vec::new();
        for part in [first, second] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(server_name(&split), Hello::Name("db.example.com".into()));
        // An address has no server name; HTTP is not TLS.
        assert_eq!(server_name(&client_hello("127.0.0.1")), Hello::Unnamed);
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Hello::Unnamed);
    }

    #[tokio::test]
    async fn reading_stops_at_the_hello_or_at_garbage() {
        let hello = client_hello("a.example.com");
        let (mut edge, mut client) = tokio::io::duplex(64 * 1024);
        let sent = hello.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in sent.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            // Keeps the connection open: the reader must not wait for more.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut read = Vec::new();
        let name = read_server_name(&mut edge, &mut read).await;
        assert_eq!(name.as_deref(), Some("a.example.com"));
        assert_eq!(read, hello, "everything read is kept to be sent on");
    }
}
