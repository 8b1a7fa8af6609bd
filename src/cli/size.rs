//! Sizes on the command line: plain bytes or a K/M/G/T/P/E suffix, always powers of 1024
//! (`64K`, `10G`, `1MiB`). Fractions, signs and overflow are rejected with a message that
//! says what to type instead, so no size is ever silently rounded or wrapped.

const HINT: &str = "expected bytes with an optional K, M, G, T, P or E suffix \
                    (powers of 1024), e.g. 4096, 64K or 10G";

/// Parse a size or offset. Used as clap's `value_parser`, so errors become usage errors.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty size: {HINT}"));
    }
    if t.starts_with('-') {
        return Err("sizes and offsets cannot be negative".into());
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!("not a size: {HINT}"));
    }
    if suffix.starts_with(['.', ',']) {
        return Err(
            "fractional sizes are not supported; use a smaller unit (e.g. 1536M, not 1.5G)"
                .to_string(),
        );
    }
    let shift = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "p" | "pib" => 50,
        "e" | "eib" => 60,
        "kb" | "mb" | "gb" | "tb" | "pb" | "eb" => {
            return Err(format!(
                "ambiguous unit '{suffix}'; write K, M, G... or KiB, MiB, GiB... (powers of 1024)"
            ))
        }
        _ => return Err(format!("unknown unit '{suffix}': {HINT}")),
    };
    let too_large = || "too large (the maximum is 16E - 1 bytes)".to_string();
    let n: u64 = num.parse().map_err(|_| too_large())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

/// A byte count for people: `512 B`, `64 KiB`, `1.5 GiB` (exact values print without a
/// fraction).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        return format!("{} {}", bytes / scale, UNITS[unit]);
    }
    let v = bytes as f64 / scale as f64;
    if v >= 1023.95 && unit + 1 < UNITS.len() {
        // Rounding would print "1024.0 MiB"; say "1.0 GiB" instead.
        return format!("{:.1} {}", v / 1024.0, UNITS[unit + 1]);
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Parse a duration such as `1s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        "not a duration: expected e.g. 1s, 500ms, 2m or a number of seconds".to_string()
    })?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown duration unit '{unit}' (use ms, s or m)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_as_powers_of_1024() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            " ",
            "10X",
            "-1",
            "1.5G",
            "G",
            "abc",
            "10KB",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("16E").unwrap_err().contains("too large"));
        assert!(parse_size("-1").unwrap_err().contains("negative"));
        assert!(parse_size("1.5G").unwrap_err().contains("fractional"));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 10), "64 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size((1 << 30) - 1), "1.0 GiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
    }
}
