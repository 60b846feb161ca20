//! Streaming an object in and out: plaintext → zstd → age → store, and back, checking the
//! stored bytes' SHA-256 and size against the manifest.
//!
//! The compressing and encrypting runs on a blocking thread; it hands 1 MiB chunks through a
//! channel of 4 to the async upload (8 MiB parts, 2 in flight), so memory stays near 30 MiB
//! whatever the size. Downloads are the mirror image. A failed upload is aborted (a multipart
//! upload is cancelled, a partial file removed) before the error returns.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::catalog::ObjectRecord;
use crate::error::{BackupError, Result};

const CHUNK: usize = 1 << 20;
const PART: usize = 8 << 20;
const ZSTD_LEVEL: i32 = 3;

/// Compresses and encrypts everything `source` yields into `path`.
pub async fn upload(
    store: Arc<dyn ObjectStore>,
    path: &ObjectPath,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    source: impl Read + Send + 'static,
) -> Result<ObjectRecord> {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(4);
    let sealing = tokio::task::spawn_blocking(move || seal(source, &recipients, sender));
    let store_of_path = store.clone();
    let mut writer = BufWriter::with_capacity(store, path.clone(), PART).with_max_concurrency(2);
    let mut failure = None;
    while let Some(chunk) = receiver.recv().await {
        if let Err(error) = writer.write_all(&chunk).await {
            failure = Some(error);
            break;
        }
    }
    drop(receiver);
    let sealed = sealing
        .await
        .map_err(|e| BackupError::Tool(format!("the compressing thread failed: {e}")));
    let result = match (failure, sealed) {
        (Some(error), _) => Err(BackupError::io(format!("upload of {path}"), error)),
        (None, Err(error)) | (None, Ok(Err(error))) => Err(error),
        (None, Ok(Ok(record))) => match writer.shutdown().await {
            Ok(()) => return Ok(record),
            // The writer is spent: its multipart upload is aborted by the store's lifecycle
            // rule (docs/backups.md); an object that did get written is deleted.
            Err(error) => {
                let _ = store_of_path.delete(path).await;
                return Err(BackupError::io(format!("upload of {path}"), error));
            }
        },
    };
    let _ = writer.abort().await;
    result
}

/// The blocking half of [`upload`]: read, compress, encrypt, hash, send.
fn seal(
    mut source: impl Read,
    recipients: &[age::x25519::Recipient],
    sender: mpsc::Sender<Bytes>,
) -> Result<ObjectRecord> {
    let sink = ChannelSink {
        sender,
        buffer: Vec::with_capacity(CHUNK),
        hasher: Sha256::new(),
        size: 0,
    };
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| BackupError::Crypt(format!("no recipients to encrypt to: {e}")))?;
    let fail = |what: &str, e: std::io::Error| BackupError::io(what.to_string(), e);
    let encrypted = encryptor
        .wrap_output(sink)
        .map_err(|e| fail("encrypting", e))?;
    let mut compressed =
        zstd::Encoder::new(encrypted, ZSTD_LEVEL).map_err(|e| fail("compressing", e))?;
    let mut buffer = vec![0u8; CHUNK / 4];
    let mut plain_size = 0u64;
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail("reading the data to back up", e)),
        };
        plain_size += n as u64;
        compressed
            .write_all(&buffer[..n])
            .map_err(|e| fail("compressing", e))?;
    }
    let encrypted = compressed.finish().map_err(|e| fail("compressing", e))?;
    let mut sink = encrypted.finish().map_err(|e| fail("encrypting", e))?;
    sink.send_buffer().map_err(|e| fail("uploading", e))?;
    Ok(ObjectRecord {
        name: String::new(),
        size: sink.size,
        sha256: hex::encode(sink.hasher.finalize()),
        plain_size,
    })
}

/// Collects ciphertext into chunks for the uploader, hashing and counting it.
struct ChannelSink {
    sender: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
    hasher: Sha256,
    size: u64,
}

impl ChannelSink {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sender
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Downloads `path`, checks it against `expected`, decrypts and decompresses it into `sink`.
/// The check of size and SHA-256 happens before the last plaintext is written: on a mismatch
/// `sink` sees an incomplete stream and the error, never a clean end.
pub async fn download<W: Write + Send + 'static>(
    store: Arc<dyn ObjectStore>,
    path: &ObjectPath,
    identity: Arc<age::x25519::Identity>,
    expected: ObjectRecord,
    sink: W,
) -> Result<(u64, W)> {
    fetch(store, path, identity, Some(expected), sink).await
}

/// [`download`] of an object no manifest records (an archived WAL segment): age's
/// authentication of every chunk and of the stream's end is the check.
pub async fn download_unrecorded<W: Write + Send + 'static>(
    store: Arc<dyn ObjectStore>,
    path: &ObjectPath,
    identity: Arc<age::x25519::Identity>,
    sink: W,
) -> Result<(u64, W)> {
    fetch(store, path, identity, None, sink).await
}

async fn fetch<W: Write + Send + 'static>(
    store: Arc<dyn ObjectStore>,
    path: &ObjectPath,
    identity: Arc<age::x25519::Identity>,
    expected: Option<ObjectRecord>,
    sink: W,
) -> Result<(u64, W)> {
    let result = store
        .get(path)
        .await
        .map_err(|e| BackupError::store(format!("cannot read {path}"), e))?;
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let name = path.to_string();
    let opening =
        tokio::task::spawn_blocking(move || open(receiver, &identity, expected, &name, sink));
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other);
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(sender);
    opening
        .await
        .map_err(|e| BackupError::Tool(format!("the decompressing thread failed: {e}")))?
}

fn open<W: Write>(
    receiver: mpsc::Receiver<std::io::Result<Bytes>>,
    identity: &age::x25519::Identity,
    expected: Option<ObjectRecord>,
    name: &str,
    mut sink: W,
) -> Result<(u64, W)> {
    let source = ChannelSource {
        receiver,
        current: Bytes::new(),
        hasher: Sha256::new(),
        size: 0,
        expected,
        name: name.to_string(),
    };
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::new(source)).map_err(|e| {
        BackupError::Integrity(format!("{name}: not a backup this key can read: {e}"))
    })?;
    let decrypted = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| BackupError::Crypt(format!("{name}: cannot decrypt: {e}")))?;
    let mut decompressed = zstd::Decoder::new(decrypted)
        .map_err(|e| BackupError::io(format!("{name}: decompressing"), e))?;
    let copied = copy_large(&mut decompressed, &mut sink).map_err(|e| {
        let kind = e.kind();
        let message = format!("{name}: {e}");
        if kind == std::io::ErrorKind::InvalidData || kind == std::io::ErrorKind::UnexpectedEof {
            BackupError::Integrity(message)
        } else {
            BackupError::Io {
                what: format!("{name}: restoring"),
                source: e,
            }
        }
    })?;
    Ok((copied, sink))
}

/// `std::io::copy` with a 1 MiB buffer: its 8 KiB one makes a write (a syscall into a pipe, for
/// pg_restore's stdin) per 8 KiB, ~130 000 for a 1 GiB dump.
fn copy_large(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        copied += n as u64;
    }
}

/// The ciphertext as the store returns it, hashed; at its end, size and SHA-256 must match.
struct ChannelSource {
    receiver: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    hasher: Sha256,
    size: u64,
    expected: Option<ObjectRecord>,
    name: String,
}

impl Read for ChannelSource {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => {
                    let chunk = chunk?;
                    self.hasher.update(&chunk);
                    self.size += chunk.len() as u64;
                    self.current = chunk;
                }
                None => return self.finish().map(|()| 0),
            }
        }
        let n = buffer.len().min(self.current.len());
        buffer[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl ChannelSource {
    fn finish(&mut self) -> std::io::Result<()> {
        let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        if self.size != expected.size || digest != expected.sha256 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not the object the manifest records ({} bytes, sha256 {}; the manifest says {} bytes, sha256 {}): it was changed, truncated or corrupted",
                    self.name, self.size, digest, expected.size, expected.sha256
                ),
            ));
        }
        Ok(())
    }
}

/// Encrypts a small document (a manifest) and stores it in one put.
pub async fn put_sealed(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    recipients: &[age::x25519::Recipient],
    plaintext: &[u8],
) -> Result<()> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| BackupError::Crypt(format!("no recipients to encrypt to: {e}")))?;
    let mut output = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut output)
        .map_err(|e| BackupError::io("encrypting", e))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| BackupError::io("encrypting", e))?;
    store
        .put(path, PutPayload::from(output))
        .await
        .map_err(|e| BackupError::store(format!("cannot write {path}"), e))?;
    Ok(())
}

/// Reads and decrypts a small document.
pub async fn get_sealed(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    identity: &age::x25519::Identity,
) -> Result<Vec<u8>> {
    let bytes = store
        .get(path)
        .await
        .map_err(|e| BackupError::store(format!("cannot read {path}"), e))?
        .bytes()
        .await
        .map_err(|e| BackupError::store(format!("cannot read {path}"), e))?;
    let decryptor = age::Decryptor::new(&bytes[..]).map_err(|e| {
        BackupError::Integrity(format!("{path}: not a backup this key can read: {e}"))
    })?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| BackupError::Crypt(format!("{path}: cannot decrypt: {e}")))?;
    let mut plaintext = Vec::new();
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| BackupError::Integrity(format!("{path}: {e}")))?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trip_and_tampering() {
        let identity = Arc::new(age::x25519::Identity::generate());
        let recipients = Arc::new(vec![identity.to_public()]);
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = ObjectPath::from("b/1/data");
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let rt = runtime();
        let record = rt
            .block_on(upload(
                store.clone(),
                &path,
                recipients,
                std::io::Cursor::new(data.clone()),
            ))
            .unwrap();
        assert_eq!(record.plain_size, data.len() as u64);
        let stored = rt.block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() });
        assert_eq!(stored.len() as u64, record.size);
        assert!(
            !stored.windows(16).any(|w| w == &data[4000..4016]),
            "no plaintext stored"
        );
        let (n, out) = rt
            .block_on(download(
                store.clone(),
                &path,
                identity.clone(),
                record.clone(),
                Vec::new(),
            ))
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(out == data);

        // A manifest that records another digest: refused at the end of the stream.
        let mut wrong = record.clone();
        wrong.sha256 = "0".repeat(64);
        let error = rt
            .block_on(download(
                store.clone(),
                &path,
                identity.clone(),
                wrong,
                Vec::new(),
            ))
            .unwrap_err();
        assert!(matches!(error, BackupError::Integrity(_)), "{error}");

        // One byte flipped in the middle: refused.
        let mut corrupted = stored.to_vec();
        let middle = corrupted.len() / 2;
        corrupted[middle] ^= 0x40;
        rt.block_on(store.put(&path, PutPayload::from(corrupted)))
            .unwrap();
        let error = rt
            .block_on(download(store, &path, identity, record, Vec::new()))
            .unwrap_err();
        assert!(matches!(error, BackupError::Integrity(_)), "{error}");
    }
}
