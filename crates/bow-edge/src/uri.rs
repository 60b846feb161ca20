//! The one normaliser of request targets: the path that routing matches and the upstream
//! receives (RFC 3986 §6.2.2: dot segments removed, unreserved characters decoded, hex in
//! upper case), and the host a request names. Ambiguous targets are refused rather than
//! guessed at (docs/agent.md, "Paths").

use std::borrow::Cow;

/// Why a request target or host is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Not origin form (`/path`): `*`, `host:port`, or no leading slash.
    NotOrigin,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`, or a raw NUL (which would turn into `%00`).
    Nul,
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// A fragment (`#`), which a client never sends.
    Fragment,
    /// A segment that turns into `.` or `..` when an encoded `/` or `\` in it is read as a
    /// separator, as some servers do (`..%2f`).
    EncodedDotSegment,
}

impl TargetError {
    /// The reason given in a 400 answer.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TargetError::NotOrigin => "the request target is not a path",
            TargetError::BadEscape => "the path has a bad percent escape",
            TargetError::Nul => "the path has a NUL (raw or %00)",
            TargetError::Backslash => "the path has a backslash",
            TargetError::Fragment => "the request target has a fragment",
            TargetError::EncodedDotSegment => {
                "the path has a dot segment behind an encoded slash or backslash"
            }
        }
    }
}

/// Byte classes of a path in normal form.
const KEEP: u8 = 1;
/// Unreserved: never percent-encoded in normal form.
const UNRESERVED: u8 = 2;

static CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        // pchar (RFC 3986 §3.3) less pct-encoded, plus the segment separator.
        let keep = unreserved
            || matches!(
                b,
                b'!' | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        class[byte] = if unreserved {
            UNRESERVED | KEEP
        } else if keep {
            KEEP
        } else {
            0
        };
        byte += 1;
    }
    class
};

/// The normal form of `path` (the part of an origin-form target before `?`), borrowed when
/// it is normal already: the usual case costs one scan and no allocation.
///
/// Policy: `.` and `..` segments are removed (`..` never climbs above `/`); `%XX` of an
/// unreserved character is decoded, other escapes keep their byte with upper-case hex;
/// bytes that may not appear raw in a path (`"`, `<`, `{`, non-ASCII, …) are encoded;
/// `%2F` and `%5C` stay encoded (data, not separators) unless a segment would become `.`
/// or `..` were they read as separators, which is refused; a raw `\`, `%00` or a raw NUL,
/// a bad escape and a fragment are refused.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOrigin);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len() + 8);
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        match byte {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(at + 1).and_then(|&digit| hex_value(digit)),
                    bytes.get(at + 2).and_then(|&digit| hex_value(digit)),
                ) else {
                    return Err(TargetError::BadEscape);
                };
                let value = high << 4 | low;
                if value == 0 {
                    return Err(TargetError::Nul);
                }
                if CLASS[value as usize] & UNRESERVED != 0 {
                    decoded.push(value as char);
                } else {
                    push_escaped(&mut decoded, value);
                }
                at += 3;
                continue;
            }
            b'\\' => return Err(TargetError::Backslash),
            0 => return Err(TargetError::Nul),
            b'#' => return Err(TargetError::Fragment),
            _ if CLASS[byte as usize] & KEEP != 0 => decoded.push(byte as char),
            _ => push_escaped(&mut decoded, byte),
        }
        at += 1;
    }
    let normal = remove_dot_segments(&decoded);
    if normal.contains("%2F") || normal.contains("%5C") {
        for segment in normal.split('/') {
            let pieces = segment.split("%2F").flat_map(|piece| piece.split("%5C"));
            if pieces.clone().count() > 1
                && pieces
                    .into_iter()
                    .any(|piece| piece == "." || piece == "..")
            {
                return Err(TargetError::EncodedDotSegment);
            }
        }
    }
    Ok(Cow::Owned(normal))
}

/// Whether `path` (starting with `/`) is in normal form already: only bytes kept raw, no
/// escape, no dot segment.
fn is_normal(bytes: &[u8]) -> bool {
    let mut previous = 0u8;
    for (at, &byte) in bytes.iter().enumerate() {
        if CLASS[byte as usize] & KEEP == 0 {
            return false;
        }
        if byte == b'.' && previous == b'/' {
            let rest = &bytes[at + 1..];
            let dot_segment = matches!(rest, [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..]);
            if dot_segment {
                return false;
            }
        }
        previous = byte;
    }
    true
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(byte >> 4) as usize] as char);
    out.push(HEX[(byte & 0xf) as usize] as char);
}

/// RFC 3986 §5.2.4 for a path starting with `/`: `.` segments go, `..` takes the segment
/// before it (none above the root); a path ending in `.` or `..` keeps its final `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether `host` is a host a request may name: a registered name or IPv4 address
/// (letters, digits, `-`, `.`, `_`, `~`) or an IPv6 literal in brackets, then an optional
/// `:port`. Anything else (userinfo, a path, spaces, quotes, escapes) is refused.
pub(crate) fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => {
            let Some(end) = host.iter().position(|&byte| byte == b']') else {
                return false;
            };
            let inside = &host[1..end];
            let literal = !inside.is_empty()
                && inside
                    .iter()
                    .all(|&byte| byte.is_ascii_hexdigit() || byte == b':' || byte == b'.');
            if !literal {
                return false;
            }
            (&host[..=end], &host[end + 1..])
        }
        _ => match host.iter().position(|&byte| byte == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &[][..]),
        },
    };
    let name_ok = name.first() == Some(&b'[')
        || (!name.is_empty()
            && name.len() <= 255
            && name.iter().all(|&byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
            }));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    name_ok && port_ok
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a query value (`%XX` and `+`).
pub(crate) fn decode_query_value(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' if at + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(byte) => {
                        out.push(byte);
                        at += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, TargetError> {
        normalize_path(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a/b.c",
            "/.well-known/x",
            "/a..b/.c/..d",
            "/a//b/",
            "/~u/a:b@c!$&'()*+,;=",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_and_escapes_are_normalised() {
        let cases = [
            ("/files/../secret.txt", "/secret.txt"),
            ("/files/%2e%2e/secret.txt", "/secret.txt"),
            ("/files/%2E./x", "/x"),
            ("/x/../api/y", "/api/y"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/.", "/"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/€", "/%E2%82%AC"),
            ("/a b", "/a%20b"),
            ("/a\"<>{}|^`", "/a%22%3C%3E%7B%7D%7C%5E%60"),
            ("/a%3f", "/a%3F"),
            ("/.%2e/b", "/b"),
        ];
        for (path, expected) in cases {
            assert_eq!(normal(path).as_deref(), Ok(expected), "{path}");
            // Normalising is idempotent.
            assert_eq!(normal(expected).as_deref(), Ok(expected), "{expected}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("files", TargetError::NotOrigin),
            ("*", TargetError::NotOrigin),
            ("", TargetError::NotOrigin),
            ("/files/..%2fsecret", TargetError::EncodedDotSegment),
            ("/files/%2e%2e%2Fsecret", TargetError::EncodedDotSegment),
            ("/files/a%2f..", TargetError::EncodedDotSegment),
            ("/files/.%5c", TargetError::EncodedDotSegment),
            ("/a%00", TargetError::Nul),
            // Found by the path_route fuzz target: a raw NUL was encoded as %00, which
            // normalising again refused.
            ("/\u{3}\0\0\0api/y", TargetError::Nul),
            ("/a%zz", TargetError::BadEscape),
            ("/a%4", TargetError::BadEscape),
            ("/a%", TargetError::BadEscape),
            ("/a\\b", TargetError::Backslash),
            ("/a#b", TargetError::Fragment),
        ];
        for (path, error) in cases {
            assert_eq!(normal(path), Err(error), "{path}");
        }
    }

    #[test]
    fn hosts() {
        for host in [
            "a.com",
            "a.com:8443",
            "app.localhost",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "x_y.z",
        ] {
            assert!(valid_host(host.as_bytes()), "{host}");
        }
        for host in [
            "",
            "a.com/x",
            "u@a.com",
            "a.com:x",
            "a b",
            "a\"b",
            "[::1",
            "[zz]",
            "a.com:123456",
            "a%41",
        ] {
            assert!(!valid_host(host.as_bytes()), "{host}");
        }
    }
}
