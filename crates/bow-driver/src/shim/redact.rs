//! Redaction of secret values in captured output: each occurrence becomes `[redacted:NAME]`,
//! also when a value arrives split over several reads (the bytes that could begin one are
//! held back until the next read decides).

use crate::secret_files::SecretFile;

/// Replaces secret values in a byte stream.
pub struct Redactor {
    /// (value, marker), longest value first.
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    first_bytes: [bool; 256],
    held: Vec<u8>,
}

impl Redactor {
    /// Redacts each non-empty value, and the value without its trailing newline when it has
    /// one (what `echo` or `print` of the value shows).
    pub fn new(secrets: &[SecretFile]) -> Redactor {
        let mut patterns = Vec::new();
        for secret in secrets {
            let marker = format!("[redacted:{}]", secret.name).into_bytes();
            let trimmed = secret
                .value
                .strip_suffix(b"\n")
                .map(|v| v.strip_suffix(b"\r").unwrap_or(v));
            for value in [Some(secret.value.as_slice()), trimmed]
                .into_iter()
                .flatten()
            {
                if !value.is_empty() {
                    patterns.push((value.to_vec(), marker.clone()));
                }
            }
        }
        patterns.sort_by(|a, b| (b.0.len(), &a.0).cmp(&(a.0.len(), &b.0)));
        patterns.dedup_by(|a, b| a.0 == b.0);
        let mut first_bytes = [false; 256];
        for (value, _) in &patterns {
            first_bytes[value[0] as usize] = true;
        }
        Redactor {
            patterns,
            first_bytes,
            held: Vec::new(),
        }
    }

    /// Appends the redacted form of `input` to `out`, except a tail that may be the start
    /// of a value; it is decided with the next input or at [`Redactor::finish`].
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.patterns.is_empty() {
            out.extend_from_slice(input);
            return;
        }
        self.held.extend_from_slice(input);
        let data = std::mem::take(&mut self.held);
        self.scan(&data, out, false);
    }

    /// The end of the stream: what was held back is redacted and appended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let data = std::mem::take(&mut self.held);
        self.scan(&data, out, true);
    }

    fn scan(&mut self, data: &[u8], out: &mut Vec<u8>, at_end: bool) {
        let mut at = 0;
        'bytes: while at < data.len() {
            if self.first_bytes[data[at] as usize] {
                let rest = &data[at..];
                for (value, marker) in &self.patterns {
                    if rest.starts_with(value) {
                        out.extend_from_slice(marker);
                        at += value.len();
                        continue 'bytes;
                    }
                    if !at_end && rest.len() < value.len() && value.starts_with(rest) {
                        self.held = rest.to_vec();
                        return;
                    }
                }
            }
            out.push(data[at]);
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[(&str, &str)]) -> Redactor {
        let secrets: Vec<SecretFile> = values
            .iter()
            .map(|(name, value)| SecretFile {
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect();
        Redactor::new(&secrets)
    }

    fn run(redactor: &mut Redactor, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for chunk in chunks {
            redactor.feed(chunk.as_bytes(), &mut out);
        }
        redactor.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_replaced_even_when_split_over_reads() {
        let mut r = redactor(&[("db", "s3cret-v4lue\n"), ("api", "k\ney")]);
        assert_eq!(
            run(&mut r, &["pw=s3cr", "et-v4", "lue done\n"]),
            "pw=[redacted:db] done\n"
        );
        assert_eq!(run(&mut r, &["a k", "\ney b\n"]), "a [redacted:api] b\n");
        // Every split point of a line with two values.
        let line = "x s3cret-v4lue y k\ney z s3cret";
        for cut in 0..=line.len() {
            let (a, b) = line.split_at(cut);
            assert_eq!(
                run(&mut r, &[a, b]),
                "x [redacted:db] y [redacted:api] z s3cret",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_longest_value_wins_and_nothing_is_held_without_a_partial_match() {
        let mut r = redactor(&[("short", "abc"), ("long", "abcdef")]);
        let mut out = Vec::new();
        r.feed(b"xx abcdef abc ab", &mut out);
        assert_eq!(out, b"xx [redacted:long] [redacted:short] ");
        r.feed(b"q\n", &mut out);
        assert_eq!(out, b"xx [redacted:long] [redacted:short] abq\n");
        let mut none = redactor(&[]);
        assert_eq!(run(&mut none, &["plain"]), "plain");
    }
}
