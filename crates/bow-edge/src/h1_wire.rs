//! The bytes of HTTP/1.1 answers the edge writes itself: status line, `connection`,
//! `date`, chunk size lines.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;

use crate::forwarded::push_header;

/// `HTTP/1.1 200 OK\r\n`.
pub(crate) fn push_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `connection: close` when the connection closes after this response; `keep-alive` for an
/// HTTP/1.0 client whose connection stays.
pub(crate) fn push_connection(out: &mut Vec<u8>, keep_alive: bool, http10: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

thread_local! {
    /// The `Date` value of the current second, made once a second per thread.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `date: <IMF-fixdate of time>\r\n`.
pub(crate) fn push_date(out: &mut Vec<u8>, time: SystemTime) {
    let second = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(time));
        }
        push_header(out, b"date", date.1.as_bytes());
    });
}

/// `<size in hex>\r\n` of a chunk, in `buffer`.
pub(crate) fn hex_line(buffer: &mut [u8; 18], size: usize) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    let mut left = size;
    loop {
        at -= 1;
        buffer[at] = DIGITS[left & 0xf];
        left >>= 4;
        if left == 0 {
            break;
        }
    }
    buffer[16] = b'\r';
    buffer[17] = b'\n';
    &buffer[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_hex() {
        let mut buffer = [0u8; 18];
        assert_eq!(hex_line(&mut buffer, 0), b"0\r\n");
        assert_eq!(hex_line(&mut buffer, 255), b"ff\r\n");
        assert_eq!(hex_line(&mut buffer, 65536), b"10000\r\n");
    }

    #[test]
    fn status_lines_and_connection_headers() {
        let mut out = Vec::new();
        push_status_line(&mut out, StatusCode::NOT_FOUND);
        push_connection(&mut out, false, false);
        push_connection(&mut out, true, true);
        push_connection(&mut out, true, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\nconnection: keep-alive\r\n"
        );
    }
}
