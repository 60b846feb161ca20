//! Differential framing tests: every request of `tests/framing/cases.txt` goes through the
//! real edge to a raw upstream that records the exact bytes it got. The upstream's bytes are
//! read by a second, independent reader (`support/reference.rs`, RFC 9112 read strictly),
//! and so are the client's. For each case: the client gets the statuses the table says; every
//! request the edge forwarded is one the reference read from the client, with the same
//! method and body and one framing header of the edge's; no byte is left over that an
//! upstream could read as another request; and where the reference finds a request invalid
//! or ambiguous, the edge refused it.

mod support;

use std::time::Duration;

use bow_edge::{Backend, Route, RouteTable};
use support::reference::{self, Read};
use support::{HOST, Recorded, RecordingUpstream, TestEdge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Case {
    name: String,
    statuses: Vec<u16>,
    bytes: Vec<u8>,
}

/// `\r \n \t \0 \\ \xNN` → bytes.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            out.push(bytes[at]);
            at += 1;
            continue;
        }
        let (byte, used) = match bytes[at + 1] {
            b'r' => (b'\r', 2),
            b'n' => (b'\n', 2),
            b't' => (b'\t', 2),
            b'0' => (0, 2),
            b'\\' => (b'\\', 2),
            b'x' => {
                let hex = std::str::from_utf8(&bytes[at + 2..at + 4]).unwrap();
                (u8::from_str_radix(hex, 16).unwrap(), 4)
            }
            other => panic!("unknown escape \\{}", other as char),
        };
        out.push(byte);
        at += used;
    }
    out
}

fn cases() -> Vec<Case> {
    let table = include_str!("framing/cases.txt");
    table
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, " | ");
            let name = fields.next().unwrap().trim().to_string();
            let statuses = fields
                .next()
                .unwrap()
                .split_whitespace()
                .map(|status| status.parse().unwrap())
                .collect();
            let bytes = unescape(fields.next().unwrap_or_else(|| panic!("{name}: no bytes")));
            Case {
                name,
                statuses,
                bytes,
            }
        })
        .collect()
}

/// The statuses of the responses in `bytes` (1xx skipped), read with httparse.
fn statuses(mut bytes: &[u8]) -> Result<Vec<u16>, String> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(bytes) {
            Ok(httparse::Status::Complete(length)) => length,
            other => return Err(format!("unreadable response: {other:?}")),
        };
        let code = response.code.unwrap();
        let body = response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("content-length"))
            .map(|header| {
                std::str::from_utf8(header.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        if response
            .headers
            .iter()
            .any(|header| header.name.eq_ignore_ascii_case("transfer-encoding"))
        {
            return Err("the edge answered chunked where a length was known".into());
        }
        bytes = &bytes[length..];
        if (100..200).contains(&code) {
            continue;
        }
        let body = body.ok_or("a response without content-length")?;
        bytes = &bytes[body.min(bytes.len())..];
        found.push(code);
    }
    Ok(found)
}

/// Sends `bytes` on a new TLS connection and reads until the edge closes it.
async fn exchange(edge: &TestEdge, bytes: &[u8]) -> Vec<u8> {
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut answer));
    let _ = read.await.expect("the edge closes the connection");
    answer
}

/// What each upstream connection got since `before`: its new requests.
fn new_requests(before: &[Recorded], after: &[Recorded]) -> Vec<reference::Request> {
    after
        .iter()
        .enumerate()
        .flat_map(|(index, recorded)| {
            let seen = before.get(index).map_or(0, |old| old.requests.len());
            recorded.requests[seen..].to_vec()
        })
        .collect()
}

/// What a case broke, if anything.
fn check(
    case: &Case,
    answer: &[u8],
    forwarded: &[reference::Request],
    after: &[Recorded],
) -> Result<(), String> {
    let got = statuses(answer)?;
    if got != case.statuses {
        return Err(format!("statuses {got:?}, expected {:?}", case.statuses));
    }
    // The second opinion on the client's bytes.
    let (requests, rest) = reference::read_all(&case.bytes);
    let served = got.iter().filter(|&&status| status == 200).count();
    if forwarded.len() != served {
        return Err(format!(
            "{} requests forwarded for {served} answered by the upstream",
            forwarded.len()
        ));
    }
    if served > requests.len() {
        return Err(format!(
            "the edge forwarded {served} requests where the reference read {} ({rest:?})",
            requests.len()
        ));
    }
    if let Read::Invalid(why) = &rest
        && got.len() > requests.len()
        && got[requests.len()] == 200
    {
        return Err(format!(
            "the edge forwarded what the reference refuses: {why}"
        ));
    }
    for (sent, received) in requests.iter().zip(forwarded) {
        if !sent.method.eq(&received.method) || sent.body != received.body {
            return Err(format!("sent {sent:?}, upstream read {received:?}"));
        }
        let lengths = received.values("content-length");
        let codings = received.values("transfer-encoding");
        let framed = match (lengths.as_slice(), codings.as_slice()) {
            ([], []) => received.body.is_empty(),
            ([length], []) => *length == received.body.len().to_string().as_bytes(),
            ([], [_]) => received.framing == "chunked",
            _ => false,
        };
        if !framed {
            return Err(format!(
                "framing headers of the forwarded request: {received:?}"
            ));
        }
        if received.values("host").len() != 1 {
            return Err(format!(
                "host headers of the forwarded request: {received:?}"
            ));
        }
    }
    // Nothing an upstream could read as one more request.
    for recorded in after {
        if let Some(why) = &recorded.invalid {
            return Err(format!("the upstream read an invalid request: {why}"));
        }
        let consumed: usize = recorded
            .requests
            .iter()
            .map(|request| request.consumed)
            .sum();
        let left = &recorded.bytes[consumed..];
        if !left.is_empty() && !matches!(reference::read(left), Read::Partial) {
            return Err(format!(
                "bytes left on an upstream connection: {:?}",
                String::from_utf8_lossy(left)
            ));
        }
    }
    Ok(())
}

#[test]
fn the_reference_reader_is_strict() {
    reference::self_check();
}

#[tokio::test]
async fn every_case_is_refused_or_forwarded_as_framed() {
    let upstream = RecordingUpstream::start().await;
    let edge = TestEdge::start(|config| {
        config.idle_timeout = Duration::from_millis(400);
        config.body_timeout = Duration::from_secs(1);
    })
    .await;
    let backend = Backend::new("raw", vec![upstream.endpoint()]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    let cases = cases();
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = upstream.recorded();
        let answer = exchange(&edge, &case.bytes).await;
        // The upstream may still be reading what the edge sent last.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = upstream.recorded();
        let forwarded = new_requests(&before, &after);
        if let Err(why) = check(case, &answer, &forwarded, &after) {
            failures.push(format!(
                "{}: {why}\n  answer: {:?}",
                case.name,
                String::from_utf8_lossy(&answer)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
