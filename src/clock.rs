//! Wall-clock time behind a trait, so retention, backoff and audit timestamps can be simulated in
//! tests. Monotonic durations inside one process use `std::time::Instant` directly; this trait is
//! for times that are stored, compared across restarts, or shown to people.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a misconfigured appliance; treat it as the epoch rather than
        // panicking in every worker.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to: for tests of retention, backoff and expiry.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms`.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Formats milliseconds since the epoch as `2023-12-12 21:12:45.386547` (UTC), the form Kasm
/// uses for `{start_date}` in upload locations and the form the history page shows.
pub fn format_datetime_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let micros = (ms % 1000) * 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The time zone the pages show wall-clock times and date filters in (`http.display-timezone`):
/// an IANA zone from the system's zoneinfo or the database bundled in the binary.
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayZone {
    tz: jiff::tz::TimeZone,
    /// The IANA name, or what the zone is called when it has none (a copied /etc/localtime).
    name: String,
}

impl Default for DisplayZone {
    fn default() -> Self {
        Self::utc()
    }
}

impl DisplayZone {
    /// UTC.
    pub fn utc() -> Self {
        Self {
            tz: jiff::tz::TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// The appliance's own zone: `TZ`, else `/etc/localtime`; UTC when neither names one.
    pub fn system() -> Self {
        match jiff::tz::TimeZone::try_system() {
            Ok(tz) => {
                let name = tz.iana_name().map_or_else(
                    || {
                        let offset = tz.to_offset(jiff::Timestamp::now());
                        format!("UTC{offset}")
                    },
                    str::to_string,
                );
                Self { tz, name }
            }
            Err(_) => Self::utc(),
        }
    }

    /// The zone with this IANA name (`Europe/Berlin`, `UTC`).
    ///
    /// # Errors
    /// The name is not in the time zone database; the message says so.
    pub fn named(name: &str) -> Result<Self, String> {
        let tz = jiff::tz::TimeZone::get(name)
            .map_err(|_| format!("{name:?} is not an IANA time zone name (e.g. Europe/Berlin)"))?;
        Ok(Self {
            tz,
            name: name.to_string(),
        })
    }

    /// The IANA name (or `UTC+HH:MM` for a zone without one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IANA name when the zone has one (browsers format in it).
    pub fn iana_name(&self) -> Option<&str> {
        self.tz.iana_name()
    }

    fn zoned(&self, ms: u64) -> jiff::ZonedDateTime {
        let ts = jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
            .unwrap_or(jiff::Timestamp::MAX);
        ts.to_zoned_datetime(self.tz.clone())
    }

    /// `2024-01-29 19:55:45` in this zone.
    pub fn datetime(&self, ms: u64) -> String {
        self.zoned(ms).strftime("%Y-%m-%d %H:%M:%S").to_string()
    }

    /// The zone's abbreviation at `ms` (`CET`, `CEST`, `UTC`; an offset where there is none).
    pub fn abbreviation(&self, ms: u64) -> String {
        self.zoned(ms).strftime("%Z").to_string()
    }

    /// Seconds east of UTC at `ms`.
    pub fn offset_s(&self, ms: u64) -> i32 {
        self.zoned(ms).offset().seconds()
    }

    /// The first millisecond of day `YYYY-MM-DD` in this zone; `None` for anything else.
    pub fn day_start_ms(&self, date: &str) -> Option<u64> {
        let d: jiff::civil::Date = date.trim().parse().ok()?;
        let z = d.to_zoned_datetime(self.tz.clone()).ok()?;
        u64::try_from(z.timestamp().as_millisecond()).ok()
    }

    /// The first millisecond of the day after `YYYY-MM-DD` in this zone (23, 24 or 25 hours
    /// after [`Self::day_start_ms`]).
    pub fn day_end_ms(&self, date: &str) -> Option<u64> {
        let d: jiff::civil::Date = date.trim().parse().ok()?;
        let z = d.tomorrow().ok()?.to_zoned_datetime(self.tz.clone()).ok()?;
        u64::try_from(z.timestamp().as_millisecond()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_kasm_start_date() {
        // 1706554545220 ms = 2024-01-29 18:55:45.220 UTC
        assert_eq!(
            format_datetime_ms(1_706_554_545_220),
            "2024-01-29 18:55:45.220000"
        );
        assert_eq!(format_datetime_ms(0), "1970-01-01 00:00:00.000000");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_ms(), 5);
        c.advance_ms(10);
        assert_eq!(c.now_ms(), 15);
    }

    #[test]
    fn display_zone_formats_and_bounds_days_in_its_zone() {
        let berlin = DisplayZone::named("Europe/Berlin").unwrap();
        // 2024-01-29 18:55:45 UTC is 19:55:45 in Berlin (CET, +01:00).
        assert_eq!(berlin.datetime(1_706_554_545_220), "2024-01-29 19:55:45");
        assert_eq!(berlin.abbreviation(1_706_554_545_220), "CET");
        assert_eq!(berlin.offset_s(1_706_554_545_220), 3600);
        // The day of the spring change is 23 hours long there.
        let start = berlin.day_start_ms("2024-03-31").unwrap();
        let end = berlin.day_end_ms("2024-03-31").unwrap();
        assert_eq!(end - start, 23 * 3_600_000);
        assert_eq!(start, 1_711_839_600_000); // 2024-03-30 23:00 UTC
        assert_eq!(berlin.day_start_ms("31.03.2024"), None);
        assert!(DisplayZone::named("Mars/Olympus").is_err());
        assert_eq!(DisplayZone::utc().datetime(0), "1970-01-01 00:00:00");
    }
}
