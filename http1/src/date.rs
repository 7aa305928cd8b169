//! HTTP-dates (RFC 9110 §5.6.7) for `Last-Modified`, `If-Modified-Since`, `If-Range`,
//! `Expires` and `Date`. Only the preferred IMF-fixdate form is produced; the two obsolete
//! forms (RFC 850 and asctime) are also read, because recipients must still accept them.
//! The static-file server and the response cache both read dates here, so one `If-Modified-Since`
//! means the same thing to both.

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

/// Reads an HTTP-date in any of the three forms to Unix seconds (negative before 1970);
/// `None` when it is not one.
pub fn parse(s: &str) -> Option<i64> {
    let t: Vec<&str> = s.split_ascii_whitespace().collect();
    match t.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [wd, day, mon, year, time, "GMT"] if wd.ends_with(',') && year.len() == 4 => {
            build(num(year)?, month(mon)?, num(day)?, time)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [wd, dmy, time, "GMT"] if wd.ends_with(',') => {
            let mut p = dmy.split('-');
            let (day, mon, yy) = (p.next()?, p.next()?, p.next()?);
            if p.next().is_some() || yy.len() != 2 {
                return None;
            }
            let yy = num(yy)?;
            // Two-digit years: RFC 9110 reads them as the nearest past century.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            build(year, month(mon)?, num(day)?, time)
        }
        // Sun Nov  6 08:49:37 1994
        [_wd, mon, day, time, year] if year.len() == 4 => {
            build(num(year)?, month(mon)?, num(day)?, time)
        }
        _ => None,
    }
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month(s: &str) -> Option<i64> {
    MONTHS.iter().position(|m| *m == s).map(|i| i as i64 + 1)
}

fn build(year: i64, mon: i64, day: i64, time: &str) -> Option<i64> {
    let mut p = time.split(':');
    let (h, m, s) = (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
    if p.next().is_some() || h > 23 || m > 59 || s > 60 || !(1..=31).contains(&day) {
        return None;
    }
    if day > days_in_month(year, mon) {
        return None;
    }
    Some(days_since_epoch(year, mon, day) * 86_400 + h * 3600 + m * 60 + s)
}

fn days_in_month(year: i64, mon: i64) -> i64 {
    match mon {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date, proleptic Gregorian. Counts in 400-year eras that
/// start on 1 March, so the leap day falls at the end of each era year.
fn days_since_epoch(year: i64, mon: i64, day: i64) -> i64 {
    let y = if mon <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mon + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
            assert_eq!(parse(&format(t)), Some(t as i64), "{t}");
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

    #[test]
    fn three_forms_agree() {
        let want = Some(784_111_777);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
    }

    #[test]
    fn junk_is_none() {
        for s in [
            "",
            "0",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 99999 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37:00 GMT",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }
}
