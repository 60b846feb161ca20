//! A lingering close (nginx's `lingering_close`): after an answer given before the request's
//! body was read (413, 401, 403, 429, a bad head…), the edge closes its sending side and
//! keeps reading and discarding what the client still sends, for a bounded time and size,
//! before it closes the connection. Closing a socket with unread input makes the kernel
//! send a reset, and a client still writing its body then fails on a write error
//! ("Connection reset by peer") and never reads the answer waiting for it.
//!
//! Only such connections linger: a connection whose request was read to its end closes as
//! before, and this costs nothing on the way of a request.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// How long a connection may linger in all (nginx: `lingering_time 30s`).
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(10);
/// How long one read may wait for more (nginx: `lingering_timeout 5s`).
pub(crate) const LINGER_WAIT: Duration = Duration::from_secs(5);
/// The most bytes discarded: a client sending more meets the reset after all.
pub(crate) const LINGER_BYTES: usize = 64 << 20;

/// Reads and discards until the client closes, goes quiet for [`LINGER_WAIT`], or
/// [`LINGER_TIME`] or [`LINGER_BYTES`] is reached. Call it after the sending side was shut.
pub(crate) async fn linger<IO: AsyncRead + Unpin>(io: &mut IO) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut buffer = vec![0u8; 16 * 1024];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        let wait = deadline.min(Instant::now() + LINGER_WAIT);
        match tokio::time::timeout_at(wait, io.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => discarded += read,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_until_the_client_closes_and_no_further_than_the_bound() {
        let (mut edge, mut client) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let piece = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while client.write_all(&piece).await.is_ok() {
                sent += piece.len();
                if sent >= 8 << 20 {
                    break;
                }
            }
            sent
        });
        linger(&mut edge).await;
        assert_eq!(writer.await.unwrap(), 8 << 20, "every byte was taken");

        // A client that never stops is cut at the bound.
        let (mut edge, mut client) = tokio::io::duplex(64 * 1024);
        let endless = tokio::spawn(async move {
            let piece = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while client.write_all(&piece).await.is_ok() {
                sent += piece.len();
            }
            sent
        });
        linger(&mut edge).await;
        drop(edge);
        let sent = endless.await.unwrap();
        assert!(
            (LINGER_BYTES..LINGER_BYTES + (256 << 10)).contains(&sent),
            "{sent}"
        );
    }
}
