//! W3C trace context (<https://www.w3.org/TR/trace-context/>): every request the edge sends
//! upstream carries a `traceparent` of the edge's own span — the client's trace continued when
//! it sent one valid `traceparent`, a new trace otherwise — and the access log records the
//! trace id. `tracestate` passes through untouched, as the edge adds no entry of its own.
//! Ids come from a per-thread generator seeded by the kernel: no lock, no system call per
//! request.

use std::cell::Cell;

/// `traceparent: 00-` + 32 + `-` + 16 + `-` + 2 hex digits.
const TRACEPARENT_LENGTH: usize = 55;

/// The 16 bytes that name one trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// The edge's span of one request: the trace, the span id the upstream got as its parent, the
/// client's span (0 when the trace began at the edge) and whether it is sampled — what the
/// access log and an OTLP export record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace: TraceId,
    pub span: u64,
    pub parent: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// The 32 hex digits of the trace id.
    pub fn to_hex(&self) -> String {
        self.trace.to_hex()
    }

    /// Appends the trace id's 32 hex digits.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        self.trace.write_hex(out);
    }

    pub fn is_empty(&self) -> bool {
        self.trace.is_empty()
    }
}

/// 16 lower-case hex digits of a span id.
pub fn span_hex(span: u64) -> String {
    let mut out = Vec::with_capacity(16);
    push_hex(&mut out, &span.to_be_bytes());
    String::from_utf8(out).unwrap_or_default()
}

impl TraceId {
    /// The 32 lower-case hex digits the header and the access log show.
    pub fn to_hex(&self) -> String {
        let mut out = Vec::with_capacity(32);
        push_hex(&mut out, &self.0);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the 32 hex digits.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        push_hex(out, &self.0);
    }

    /// All zeros: no trace (an invalid id in a header; the value of requests that never had one).
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 16]
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0xf)]);
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex digits into `out` (exactly twice its length), else `None`.
fn parse_hex(digits: &[u8], out: &mut [u8]) -> Option<()> {
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(())
}

/// The trace id, parent span id and flags of a `traceparent` value, when it is valid: version `00` exactly
/// as long as the format says; a later version at least that long with `-` after it
/// (§3.2.4: parse what version 00 defines); `ff`, an all-zero trace or parent id or upper-case
/// hex refused.
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<(TraceId, u64, u8)> {
    let value = value.trim_ascii();
    if value.len() < TRACEPARENT_LENGTH {
        return None;
    }
    let mut version = [0u8; 1];
    parse_hex(&value[0..2], &mut version)?;
    match version[0] {
        0 if value.len() != TRACEPARENT_LENGTH => return None,
        0xff => return None,
        0 => {}
        _ if value.len() > TRACEPARENT_LENGTH && value[TRACEPARENT_LENGTH] != b'-' => {
            return None;
        }
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    parse_hex(&value[3..35], &mut trace)?;
    let mut parent = [0u8; 8];
    parse_hex(&value[36..52], &mut parent)?;
    let mut flags = [0u8; 1];
    parse_hex(&value[53..55], &mut flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((TraceId(trace), u64::from_be_bytes(parent), flags[0]))
}

thread_local! {
    /// xorshift64* state, seeded from the kernel on a thread's first request.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// 64 random bits (xorshift64*; not for secrets, only for ids that must not collide).
fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let seed = u64::from_ne_bytes(bytes);
    if filled == 8 && seed != 0 {
        return seed;
    }
    // No entropy source: time and address still differ between threads and runs.
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    (time ^ (&bytes as *const _ as u64)) | 1
}

/// Writes the `traceparent` header for the upstream: the client's trace (`incoming`, when it
/// sent exactly one valid header) or a new one, sampled, with a new span id for the edge.
/// Returns the edge's span.
pub(crate) fn write_traceparent(out: &mut Vec<u8>, incoming: Option<&[u8]>) -> TraceContext {
    let (trace, parent, flags) = incoming.and_then(parse_traceparent).unwrap_or_else(|| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next_u64().to_be_bytes());
        id[8..].copy_from_slice(&next_u64().to_be_bytes());
        // Sampled: the edge records every request (its access log), and downstream
        // samplers that follow their parent record it too.
        (TraceId(id), 0, 0x01)
    });
    let mut span = next_u64();
    if span == 0 {
        span = 1;
    }
    out.extend_from_slice(b"traceparent: 00-");
    trace.write_hex(out);
    out.push(b'-');
    push_hex(out, &span.to_be_bytes());
    out.push(b'-');
    push_hex(out, &[flags]);
    out.extend_from_slice(b"\r\n");
    TraceContext {
        trace,
        span,
        parent,
        sampled: flags & 0x01 == 0x01,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let mut out = Vec::new();
        let trace = write_traceparent(&mut out, Some(VALID));
        assert_eq!(trace.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_hex(trace.parent), "00f067aa0ba902b7");
        assert!(trace.sampled);
        let line = String::from_utf8(out).unwrap();
        let value = line
            .strip_prefix("traceparent: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let (again, span, flags) = parse_traceparent(value.as_bytes()).unwrap();
        assert_eq!(again, trace.trace);
        assert_eq!(span_hex(span), span_hex(trace.span));
        assert_eq!(flags, 1);
        assert_ne!(&value[36..52], "00f067aa0ba902b7", "the edge's own span");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
            let mut out = Vec::new();
            let trace = write_traceparent(&mut out, Some(bad));
            assert!(!trace.is_empty());
            assert_ne!(trace.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // A later version is read as far as version 00 goes.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(parse_traceparent(later).is_some());
    }

    #[test]
    fn new_traces_differ() {
        let mut out = Vec::new();
        let a = write_traceparent(&mut out, None);
        let b = write_traceparent(&mut out, None);
        assert_ne!(a, b);
        assert_eq!(
            out.len(),
            2 * (TRACEPARENT_LENGTH + "traceparent: \r\n".len())
        );
    }
}
