//! A WebSocket upgrade passes through the edge: 101, then frames both ways.

mod support;

use std::time::Duration;

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use support::{HOST, TestEdge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64(digest.as_ref())
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed during the head"
        );
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024);
    }
    String::from_utf8(head).unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads one small frame: (opcode byte, payload), unmasking if needed.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    let mut start = [0u8; 2];
    stream.read_exact(&mut start).await.unwrap();
    let masked = start[1] & 0x80 != 0;
    let length = usize::from(start[1] & 0x7f);
    assert!(length < 126, "test frames are small");
    let mut mask = [0u8; 4];
    if masked {
        stream.read_exact(&mut mask).await.unwrap();
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.unwrap();
    if masked {
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[index % 4];
        }
    }
    (start[0], payload)
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut frame = vec![0x81];
    match mask {
        Some(mask) => {
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&mask);
            frame.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ mask[i % 4]),
            );
        }
        None => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(payload);
        }
    }
    stream.write_all(&frame).await.unwrap();
}

/// A minimal WebSocket echo server: one connection, text frames echoed until closed.
async fn echo_server(listener: TcpListener) {
    let (mut stream, _) = listener.accept().await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("GET /chat HTTP/1.1"), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("websocket"));
    assert!(header(&head, "x-forwarded-for").is_some(), "{head}");
    let key = header(&head, "sec-websocket-key").unwrap();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    stream.write_all(answer.as_bytes()).await.unwrap();
    loop {
        let (opcode, payload) = read_frame(&mut stream).await;
        if opcode & 0x0f == 0x8 {
            return;
        }
        let mut echoed = b"echo: ".to_vec();
        echoed.extend_from_slice(&payload);
        write_frame(&mut stream, &echoed, None).await;
    }
}

#[tokio::test]
async fn websocket_echo_through_the_edge() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(echo_server(listener));
    let edge = TestEdge::start(|_| {}).await;
    let backend = Backend::new("chat", vec![Endpoint::new("chat.1", upstream_addr)]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());

    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(accept_key(key).as_str())
    );
    assert_eq!(accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    for message in ["hello edge", "second frame"] {
        write_frame(&mut tls, message.as_bytes(), Some([1, 2, 3, 4])).await;
        let (opcode, payload) = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tls))
            .await
            .unwrap();
        assert_eq!(opcode, 0x81);
        assert_eq!(payload, format!("echo: {message}").into_bytes());
    }
    let close = [0x88, 0x80, 0, 0, 0, 0];
    tls.write_all(&close).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the edge keeps the tunnel open after the upstream closed"
    );
    drop(tls);

    let entries = edge.log.wait_for(1).await;
    assert_eq!(entries[0].status, 101);
    assert_eq!(entries[0].upstream.as_deref(), Some("chat.1"));
}
