//! Durations in the configuration: whole numbers with a unit, `s`, `m`, `h`, `d` or
//! `w`, alone or in a row (`"30s"`, `"5m"`, `"1h30m"`). Nothing else: `"5M"` (months in
//! some parsers), `"10y"` or `"5 minutes"` are errors that list the accepted forms.

use std::time::Duration;

const FORMS: &str = "write a whole number and a unit: s (seconds), m (minutes), h (hours), d (days) \
                     or w (weeks), like \"30s\", \"5m\", \"4h\", \"5d\" or \"1h30m\"";

pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration: {FORMS}");
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        total = number.checked_mul(seconds).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        rest = &rest[digits + 1..];
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_seconds_to_weeks() {
        let s = Duration::from_secs;
        assert_eq!(parse("0s"), Ok(s(0)));
        assert_eq!(parse("90s"), Ok(s(90)));
        assert_eq!(parse("5m"), Ok(s(300)));
        assert_eq!(parse("4h"), Ok(s(14_400)));
        assert_eq!(parse("5d"), Ok(s(432_000)));
        assert_eq!(parse("2w"), Ok(s(1_209_600)));
        assert_eq!(parse("1h30m"), Ok(s(5400)));
        for bad in
            ["", "5", "5M", "10y", "5 minutes", "5m ", " 5m", "1.5h", "-1s", "100ms", "h", "99999999999999999999w"]
        {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("s (seconds)") && err.contains("w (weeks)"), "{bad:?}: {err}");
        }
    }
}
