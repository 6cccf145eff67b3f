//! The one parser of human durations (`90s`, `45m`, `8h`, `1h30m`, `2d`): `saturday --for` and the ages
//! of `audit --since/--until` read durations the same way.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// What every duration error suggests.
const FORMS: &str = "use e.g. 90s, 45m, 8h, 1h30m or 2d (s, m or min, h, d; a bare number is seconds)";

/// Parses `90s`, `45m` (or `45min`), `8h`, `1h30m`, `2d`; a bare number is seconds. Zero is refused:
/// no caller means "no time at all".
pub fn parse(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        if n == 0 {
            bail!("duration {s:?} is zero: {FORMS}");
        }
        return Ok(Duration::from_secs(n));
    }
    let (mut total, mut rest) = (0u64, t);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (num, after) = rest.split_at(digits);
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if num.is_empty() {
            bail!("duration {s:?}: a number must precede {unit:?}; {FORMS}");
        }
        let secs = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => bail!("duration {s:?}: {num} has no unit; {FORMS}"),
            _ => bail!("duration {s:?}: unknown unit {unit:?}; {FORMS}"),
        };
        let n: u64 = num.parse().with_context(|| format!("duration {s:?}: {num} is too large; {FORMS}"))?;
        total = n
            .checked_mul(secs)
            .and_then(|x| total.checked_add(x))
            .with_context(|| format!("duration {s:?} is too long; {FORMS}"))?;
        rest = next;
    }
    if total == 0 {
        bail!("duration {s:?}: {FORMS}");
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        let secs = |s: &str| parse(s).unwrap().as_secs();
        assert_eq!(secs("90"), 90);
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("45m"), 2700);
        assert_eq!(secs("45min"), 2700);
        assert_eq!(secs("8h"), 28_800);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("2d"), 172_800);
        assert_eq!(secs(" 1d2h3m4s "), 86_400 + 7200 + 180 + 4);
    }

    #[test]
    fn bad_durations_are_refused_with_the_forms_to_use() {
        for bad in ["", "h", "5x", "1h30", "0s", "0", "m5", "1.5h", "-1h", "99999999999999999999h", "213503982334602d"]
        {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
            assert!(e.contains("90s, 45m"), "{bad:?}: {e}");
        }
    }
}
