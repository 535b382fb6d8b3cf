//! UTC calendar arithmetic for billing periods, budgets and event timestamps, without a clock:
//! every function takes the instant it reasons about.

use std::fmt;
use std::str::FromStr;

const SECONDS_PER_DAY: i64 = 86_400;

/// A civil (proleptic Gregorian) date in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> Date {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Date {
        year: i32::try_from(year).unwrap_or(i32::MAX),
        month,
        day,
    }
}

impl Date {
    pub fn of_unix(seconds: u64) -> Date {
        civil_from_days(i64::try_from(seconds).unwrap_or(i64::MAX) / SECONDS_PER_DAY)
    }

    /// Unix seconds at the start (00:00 UTC) of this date.
    pub fn start_unix(self) -> u64 {
        u64::try_from(days_from_civil(self.year, self.month, self.day) * SECONDS_PER_DAY)
            .unwrap_or(0)
    }

    pub fn next(self) -> Date {
        civil_from_days(days_from_civil(self.year, self.month, self.day) + 1)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{:04}-{:02}-{:02}",
            self.year, self.month, self.day
        )
    }
}

impl FromStr for Date {
    type Err = CalendarError;

    /// `YYYY-MM-DD`.
    fn from_str(text: &str) -> Result<Date, CalendarError> {
        let mut parts = text.splitn(3, '-');
        let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CalendarError::Malformed);
        };
        let month_of = Month::from_str(&format!("{year}-{month}"))?;
        let day: u32 = parse_digits(day, 2)?;
        if day == 0 || day > month_of.days() {
            return Err(CalendarError::Malformed);
        }
        Ok(Date {
            year: month_of.year,
            month: month_of.month,
            day,
        })
    }
}

fn parse_digits<T: FromStr>(text: &str, width: usize) -> Result<T, CalendarError> {
    if text.len() != width || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(CalendarError::Malformed);
    }
    text.parse().map_err(|_| CalendarError::Malformed)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("expected a UTC date as YYYY-MM-DD or a month as YYYY-MM")]
    Malformed,
}

/// A calendar month in UTC: the billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of_unix(seconds: u64) -> Month {
        let date = Date::of_unix(seconds);
        Month {
            year: date.year,
            month: date.month,
        }
    }

    pub fn first_day(self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: 1,
        }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn days(self) -> u32 {
        let next = self.next().first_day();
        let days = days_from_civil(next.year, next.month, next.day)
            - days_from_civil(self.year, self.month, 1);
        u32::try_from(days).unwrap_or(0)
    }

    /// `[start, end)` in unix seconds.
    pub fn bounds_unix(self) -> (u64, u64) {
        (
            self.first_day().start_unix(),
            self.next().first_day().start_unix(),
        )
    }
}

impl fmt::Display for Month {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = CalendarError;

    /// `YYYY-MM`.
    fn from_str(text: &str) -> Result<Month, CalendarError> {
        let (year, month) = text.split_once('-').ok_or(CalendarError::Malformed)?;
        let year: i32 = parse_digits(year, 4)?;
        let month: u32 = parse_digits(month, 2)?;
        if !(1..=12).contains(&month) {
            return Err(CalendarError::Malformed);
        }
        Ok(Month { year, month })
    }
}

/// RFC 3339 in UTC with milliseconds, as CloudEvents' `time` wants: `2026-11-25T08:30:00.123Z`.
pub fn rfc3339_millis(unix_millis: u64) -> String {
    let seconds = unix_millis / 1000;
    let date = Date::of_unix(seconds);
    let of_day = seconds % SECONDS_PER_DAY as u64;
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        unix_millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_unix_time() {
        let cases = [
            (0, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_795_600_000, "2026-11-25"),
            (4_107_542_399, "2100-02-28"),
        ];
        for (seconds, expected) in cases {
            let date = Date::of_unix(seconds);
            assert_eq!(date.to_string(), expected);
            assert_eq!(expected.parse::<Date>(), Ok(date));
            assert!(date.start_unix() <= seconds && seconds < date.next().start_unix());
        }
    }

    #[test]
    fn months_know_their_bounds() {
        let month: Month = "2024-02".parse().unwrap();
        assert_eq!(month.days(), 29);
        let (start, end) = month.bounds_unix();
        assert_eq!(end - start, 29 * 86_400);
        assert_eq!(
            "2026-12".parse::<Month>().unwrap().next().to_string(),
            "2027-01"
        );
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "2026-00", ""] {
            assert_eq!(bad.parse::<Month>(), Err(CalendarError::Malformed), "{bad}");
        }
        for bad in ["2026-02-30", "2026-02-00", "2026-02-1", "2026-02"] {
            assert!(bad.parse::<Date>().is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_595_400_123),
            "2026-11-25T08:30:00.123Z"
        );
    }
}
