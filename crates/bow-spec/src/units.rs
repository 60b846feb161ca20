//! Durations (`500ms`, `2s`, `1m30s`) and sizes (`256M`, `1G`) as they are written in bow.yaml.
//!
//! Both print back in the shortest exact form, so `bow config` shows what a person would write.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time written as one or more `<number><unit>` parts: `ms`, `s`, `m`, `h`, `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(millis: u64) -> Duration {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Duration::default());
        }
        if text.is_empty() {
            return Err("expected a duration like 2s, found nothing".to_string());
        }
        let mut millis: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "expected a duration like 2s or 500ms, found {text:?}"
                ));
            }
            let number: u128 = rest[..digits]
                .parse()
                .map_err(|_| format!("the number in {text:?} is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let factor = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => {
                    return Err(format!(
                        "expected a duration with a unit like 2s or 500ms, found {text:?}"
                    ));
                }
                unit => {
                    return Err(format!(
                        "unknown duration unit {unit:?} in {text:?}; use ms, s, m, h or d"
                    ));
                }
            };
            millis = millis
                .checked_add(number.saturating_mul(factor))
                .ok_or_else(|| format!("the duration {text:?} is too large"))?;
            rest = &rest[unit_len..];
        }
        let millis =
            u64::try_from(millis).map_err(|_| format!("the duration {text:?} is too large"))?;
        Ok(Duration::from_millis(millis))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if millis >= size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

/// A number of bytes written with an optional binary unit: `512K`, `256M`, `1G`, `2T`
/// (also `Mi`/`MB` style suffixes, all meaning powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(&self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        if digits == 0 {
            return Err(format!("expected a size like 256M or 1G, found {text:?}"));
        }
        let number: u64 = trimmed[..digits]
            .parse()
            .map_err(|_| format!("the size {text:?} is too large"))?;
        let shift = match trimmed[digits..].trim_start() {
            "" | "B" | "b" => 0,
            "K" | "k" | "Ki" | "KB" | "KiB" | "kB" => 10,
            "M" | "m" | "Mi" | "MB" | "MiB" => 20,
            "G" | "g" | "Gi" | "GB" | "GiB" => 30,
            "T" | "t" | "Ti" | "TB" | "TiB" => 40,
            unit => {
                return Err(format!(
                    "unknown size unit {unit:?} in {text:?}; use K, M, G or T (powers of 1024)"
                ));
            }
        };
        number
            .checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| format!("the size {text:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            let size = 1u64 << shift;
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

macro_rules! serde_as_string {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_string!(Duration);
serde_as_string!(Size);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, millis, back) in [
            ("500ms", 500, "500ms"),
            ("2s", 2000, "2s"),
            ("1m", 60_000, "1m"),
            ("1m30s", 90_000, "1m30s"),
            ("90s", 90_000, "1m30s"),
            ("0", 0, "0s"),
            ("1h", 3_600_000, "1h"),
        ] {
            let duration: Duration = text.parse().unwrap();
            assert_eq!(duration.0.as_millis(), millis, "{text}");
            assert_eq!(duration.to_string(), back);
        }
    }

    #[test]
    fn durations_reject_garbage() {
        for text in [
            "",
            "soon",
            "2",
            "2x",
            "s2",
            "-1s",
            "1.5s",
            "99999999999999999999999d",
        ] {
            assert!(text.parse::<Duration>().is_err(), "{text}");
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes, back) in [
            ("256M", 256 << 20, "256M"),
            ("1G", 1 << 30, "1G"),
            ("1Gi", 1 << 30, "1G"),
            ("512K", 512 << 10, "512K"),
            ("1000", 1000, "1000"),
            ("1536M", 1536 << 20, "1536M"),
        ] {
            let size: Size = text.parse().unwrap();
            assert_eq!(size.0, bytes, "{text}");
            assert_eq!(size.to_string(), back);
        }
    }

    #[test]
    fn sizes_reject_garbage() {
        for text in ["", "big", "1X", "-5M", "99999999999T"] {
            assert!(text.parse::<Size>().is_err(), "{text}");
        }
    }
}
