//! Five-field cron expressions (`0 3 * * *`) and the `@daily`-style shortcuts, for schedules.

/// A parsed schedule: for each field, which values fire. Times are UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    pub minutes: u64,
    pub hours: u32,
    pub days_of_month: u32,
    pub months: u16,
    pub days_of_week: u8,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Cron {
    /// Parses `m h dom mon dow` or one of `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "expected a cron schedule with 5 fields (minute hour day-of-month month day-of-week), found {} in {text:?}",
                parts.len()
            ));
        }
        let mut sets = [0u64; 5];
        for ((part, field), set) in parts.iter().zip(FIELDS.iter()).zip(sets.iter_mut()) {
            *set = parse_field(part, field).map_err(|message| format!("{message} in {text:?}"))?;
        }
        // Sunday may be written 0 or 7.
        let days_of_week = (sets[4] | (sets[4] >> 7)) & 0x7f;
        Ok(Cron {
            minutes: sets[0],
            hours: sets[1] as u32,
            days_of_month: sets[2] as u32,
            months: sets[3] as u16,
            days_of_week: days_of_week as u8,
        })
    }
}

impl Cron {
    /// Whether the schedule fires in the minute `unix_minute` (minutes since 1970-01-01 UTC).
    /// As in cron, when both the day of month and the day of week are restricted, either
    /// matching day fires.
    pub fn fires_at(&self, unix_minute: i64) -> bool {
        let minute = unix_minute.rem_euclid(60) as u32;
        let hour = unix_minute.div_euclid(60).rem_euclid(24) as u32;
        let days = unix_minute.div_euclid(60 * 24);
        let (_, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7) as u32;
        let all_days_of_month = (1..=31).fold(0u32, |set, d| set | (1 << d));
        let dom = self.days_of_month & (1 << day) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        let day_matches = match (
            self.days_of_month == all_days_of_month,
            self.days_of_week == 0x7f,
        ) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        };
        self.minutes & (1 << minute) != 0
            && self.hours & (1 << hour) != 0
            && self.months & (1 << month) != 0
            && day_matches
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {step:?} in the {} field", field.name))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low, field)?, value(high, field)?)
        } else {
            let single = value(range, field)?;
            (single, if step > 1 { field.max } else { single })
        };
        if low > high {
            return Err(format!(
                "range {range:?} runs backwards in the {} field",
                field.name
            ));
        }
        let mut current = low;
        while current <= high {
            set |= 1 << current;
            current += step;
        }
    }
    Ok(set)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let number = match field.names.iter().position(|name| *name == lower) {
        Some(position) => position as u32 + if field.min == 1 { 1 } else { 0 },
        None => text.parse::<u32>().map_err(|_| {
            format!(
                "expected a number for the {} field, found {text:?}",
                field.name
            )
        })?,
    };
    if number < field.min || number > field.max {
        return Err(format!(
            "{number} is out of range for the {} field ({}-{})",
            field.name, field.min, field.max
        ));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_schedules() {
        let cron = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(cron.minutes, 1);
        assert_eq!(cron.hours, 1 << 3);
        assert_eq!(
            Cron::parse("*/15 * * * mon-fri")
                .unwrap()
                .minutes
                .count_ones(),
            4
        );
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().days_of_week, 1);
        assert!(Cron::parse("@daily").is_ok());
    }

    #[test]
    fn rejects_bad_schedules() {
        for text in [
            "",
            "0 3 * *",
            "61 * * * *",
            "0 25 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "daily",
        ] {
            assert!(Cron::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn schedules_fire_in_their_minutes() {
        // 2026-12-05 10:31 UTC was a Saturday: 1796466660 s after the epoch.
        let at = 1_796_466_660 / 60;
        assert_eq!(super::civil_from_days(at / (60 * 24)), (2026, 12, 5));
        assert!(Cron::parse("31 10 * * *").unwrap().fires_at(at));
        assert!(!Cron::parse("30 10 * * *").unwrap().fires_at(at));
        assert!(Cron::parse("* * * * *").unwrap().fires_at(at));
        assert!(Cron::parse("31 10 * * sat").unwrap().fires_at(at));
        assert!(!Cron::parse("31 10 * * sun").unwrap().fires_at(at));
        assert!(Cron::parse("31 10 5 12 *").unwrap().fires_at(at));
        // Day of month and day of week both restricted: either fires.
        assert!(Cron::parse("31 10 1 * sat").unwrap().fires_at(at));
        assert!(!Cron::parse("@daily").unwrap().fires_at(at));
        assert!(Cron::parse("*/5 * * * *").unwrap().fires_at(at - 1));
    }
}
