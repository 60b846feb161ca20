//! The testapp's behaviour, read once from environment variables at start.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why the environment could not be turned into a [`Config`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("PORT is not set; start the testapp with PORT=<port>")]
    MissingPort,
    #[error("PORT: expected a port number like 8080, found {0:?}")]
    BadPort(String),
    #[error("{name}: expected a duration like 500ms, 2s or 1m, found {value:?}")]
    BadDuration { name: &'static str, value: String },
    #[error("{name}: expected a size like 512K, 8M or 1G, found {value:?}")]
    BadSize { name: &'static str, value: String },
    #[error("{name}: expected an integer, found {value:?}")]
    BadInteger { name: &'static str, value: String },
}

/// Everything the testapp does differently from "serve healthy forever".
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port: u16,
    pub version: String,
    pub instance: String,
    pub service: String,
    /// Exit with `exit_code` once this much time has passed since start.
    pub crash_after: Option<Duration>,
    pub exit_code: i32,
    /// `/healthz` answers 503 from the start.
    pub fail_health: bool,
    /// `/healthz` answers 503 once this much time has passed since start.
    pub fail_health_after: Option<Duration>,
    /// Sleep this long before binding the port.
    pub start_delay: Option<Duration>,
    pub ignore_sigterm: bool,
    /// Allocate and touch this many bytes every 100 ms, forever.
    pub grow_memory: Option<u64>,
    /// Environment variables to print at start, in the order given.
    pub echo_env: Vec<String>,
    /// Do not print one line per request (for benchmarks).
    pub quiet: bool,
}

impl Config {
    /// Reads the configuration from a snapshot of the environment.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let get = |name: &str| env.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let flag = |name: &str| env_flag(env, name);
        let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            get(name)
                .map(|value| {
                    parse_duration(value).ok_or_else(|| ConfigError::BadDuration {
                        name,
                        value: value.to_string(),
                    })
                })
                .transpose()
        };
        let port_text = get("PORT").ok_or(ConfigError::MissingPort)?;
        let port = port_text
            .trim()
            .parse::<u16>()
            .map_err(|_| ConfigError::BadPort(port_text.to_string()))?;
        let exit_code = match get("TESTAPP_EXIT_CODE") {
            None => 3,
            Some(value) => value.trim().parse().map_err(|_| ConfigError::BadInteger {
                name: "TESTAPP_EXIT_CODE",
                value: value.to_string(),
            })?,
        };
        let grow_memory = get("TESTAPP_GROW_MEMORY")
            .map(|value| {
                parse_size(value).ok_or_else(|| ConfigError::BadSize {
                    name: "TESTAPP_GROW_MEMORY",
                    value: value.to_string(),
                })
            })
            .transpose()?;
        let echo_env = get("TESTAPP_ECHO_ENV")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Config {
            port,
            version: get("APP_VERSION").unwrap_or("v1").to_string(),
            instance: get("BOW_INSTANCE").unwrap_or("").to_string(),
            service: get("BOW_SERVICE").unwrap_or("").to_string(),
            crash_after: duration("TESTAPP_CRASH_AFTER")?,
            exit_code,
            fail_health: flag("TESTAPP_FAIL_HEALTH"),
            fail_health_after: duration("TESTAPP_FAIL_HEALTH_AFTER")?,
            start_delay: duration("TESTAPP_START_DELAY")?,
            ignore_sigterm: flag("TESTAPP_IGNORE_SIGTERM"),
            grow_memory,
            echo_env,
            quiet: flag("TESTAPP_QUIET"),
        })
    }
}

/// True when the variable is set to anything but empty, `0` or `false`.
pub fn env_flag(env: &BTreeMap<String, String>, name: &str) -> bool {
    matches!(env.get(name).map(String::as_str), Some(v) if !v.is_empty() && v != "0" && v != "false")
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `1h`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).ok()
}

/// Parses `4096`, `512K`, `8M`, `1G` (powers of 1024; `KB`, `MiB`, `k` also accepted).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn durations_accept_the_documented_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 0ms "), Some(Duration::ZERO));
    }

    #[test]
    fn durations_reject_garbage() {
        for bad in ["", "ms", "soon", "2 weeks", "1d", ".5s", "-1s", "1..2s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512K"), Some(512 * 1024));
        assert_eq!(parse_size("8M"), Some(8 * 1024 * 1024));
        assert_eq!(parse_size("8MiB"), Some(8 * 1024 * 1024));
        assert_eq!(parse_size("8mb"), Some(8 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Some(1 << 30));
    }

    #[test]
    fn sizes_reject_garbage() {
        for bad in ["", "M", "8T", "-1M", "1.5M", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_needs_a_port() {
        assert_eq!(Config::from_env(&env(&[])), Err(ConfigError::MissingPort));
        assert_eq!(
            Config::from_env(&env(&[("PORT", "http")])),
            Err(ConfigError::BadPort("http".into()))
        );
    }

    #[test]
    fn config_defaults_serve_healthy_forever() {
        let config = Config::from_env(&env(&[("PORT", "8080")])).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.version, "v1");
        assert_eq!(config.exit_code, 3);
        assert_eq!(config.crash_after, None);
        assert!(!config.fail_health && !config.ignore_sigterm);
        assert!(config.echo_env.is_empty());
    }

    #[test]
    fn config_reads_every_switch() {
        let config = Config::from_env(&env(&[
            ("PORT", "1"),
            ("APP_VERSION", "v2"),
            ("BOW_INSTANCE", "back.1"),
            ("BOW_SERVICE", "back"),
            ("TESTAPP_CRASH_AFTER", "2s"),
            ("TESTAPP_EXIT_CODE", "7"),
            ("TESTAPP_FAIL_HEALTH_AFTER", "500ms"),
            ("TESTAPP_START_DELAY", "1s"),
            ("TESTAPP_IGNORE_SIGTERM", "1"),
            ("TESTAPP_GROW_MEMORY", "8M"),
            ("TESTAPP_ECHO_ENV", "A, B,,C"),
        ]))
        .unwrap();
        assert_eq!(config.version, "v2");
        assert_eq!(config.instance, "back.1");
        assert_eq!(config.service, "back");
        assert_eq!(config.crash_after, Some(Duration::from_secs(2)));
        assert_eq!(config.exit_code, 7);
        assert_eq!(config.fail_health_after, Some(Duration::from_millis(500)));
        assert_eq!(config.start_delay, Some(Duration::from_secs(1)));
        assert!(config.ignore_sigterm);
        assert_eq!(config.grow_memory, Some(8 << 20));
        assert_eq!(config.echo_env, vec!["A", "B", "C"]);
    }

    #[test]
    fn config_names_the_variable_in_errors() {
        let error = Config::from_env(&env(&[("PORT", "1"), ("TESTAPP_CRASH_AFTER", "soon")]));
        assert_eq!(
            error.unwrap_err().to_string(),
            "TESTAPP_CRASH_AFTER: expected a duration like 500ms, 2s or 1m, found \"soon\""
        );
    }
}
