//! HTTP-dates (RFC 9110 §5.6.7) for `Last-Modified`, `If-Modified-Since` and `If-Range`.
//! Only the preferred IMF-fixdate form is produced; the two obsolete forms are also read,
//! because old clients still send them and a date we cannot read only costs a full answer.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian.
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

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format(unix_secs: u64) -> String {
    let secs = unix_secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn month(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as u32 + 1)
}

fn hms(s: &str) -> Option<i64> {
    let mut it = s.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec)
}

fn assemble(y: i64, m: u32, d: u32, time: i64) -> Option<u64> {
    if !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d) * 86_400 + time).ok()
}

/// Reads an HTTP-date in any of the three forms; `None` when it is not one.
pub fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    let (_, rest) = s.split_once(' ')?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    match parts.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [d, mon, y, t, "GMT"] => assemble(y.parse().ok()?, month(mon)?, d.parse().ok()?, hms(t)?),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [date, t, "GMT"] => {
            let mut it = date.split('-');
            let (d, mon, y) = (it.next()?, it.next()?, it.next()?);
            let y: i64 = y.parse().ok()?;
            let y = if y < 70 { 2000 + y } else { 1900 + y };
            assemble(y, month(mon)?, d.parse().ok()?, hms(t)?)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [mon, d, t, y] => assemble(y.parse().ok()?, month(mon)?, d.parse().ok()?, hms(t)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_the_three_forms() {
        assert_eq!(format(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(1_709_251_200), "Fri, 01 Mar 2024 00:00:00 GMT");
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        for t in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse(&format(t)), Some(t), "{t}");
        }
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
