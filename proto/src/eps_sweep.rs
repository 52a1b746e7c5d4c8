//! The radii of a robustness curve: `START:END:COUNT` (evenly spaced, both ends included, each
//! end written as `--eps` takes it, e.g. `0:16/255:17`) or a comma-separated list
//! (`1/255,2/255,4/255`). Radii are returned in increasing order, distinct.
//!
//! An evenly spaced radius is computed as one division of integers when both ends are exact
//! fractions or decimals (`8/255`, `0.1`), so that it is the same `f64` as the radius written
//! out (the 9th of `0:16/255:17` is exactly `8/255`, and `0.1` of `0:0.2:5` is exactly `0.1`):
//! the evaluator's cache keys on the radius, and a sweep then shares its entries with
//! single-radius evaluations.

use crate::attacks::{parse_eps, AttackNameError};

/// Most radii one curve may have (each is one attack of the request; the evaluator takes at most
/// 64 attacks per request, and the curve shares a request with the compared attacks).
pub const MAX_RADII: usize = 48;

fn problem(text: &str, problem: &str) -> AttackNameError {
    AttackNameError::Eps { text: text.to_string(), problem: problem.to_string() }
}

/// `text` as an exact fraction `numerator / denominator` (a decimal, an integer, or `a/b` of
/// integers), when it is one small enough to compute with exactly and gives the same `f64` as
/// [`parse_eps`].
fn exact_fraction(text: &str) -> Option<(i128, i128)> {
    let decimal = |text: &str| -> Option<(i128, i128)> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole.chars().all(|c| c.is_ascii_digit())
            || !fraction.chars().all(|c| c.is_ascii_digit())
            || whole.len() + fraction.len() > 15
        {
            return None;
        }
        let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some((digits, 10i128.pow(fraction.len() as u32)))
    };
    match text.split_once('/') {
        // Only whole numbers on both sides: `parse_eps` rounds `a/b` of decimals twice (each side,
        // then the quotient), which one exact division would not reproduce (`0.3/3`).
        Some((numerator, denominator)) => match (decimal(numerator)?, decimal(denominator)?) {
            ((a, 1), (c, 1)) if c != 0 => Some((a, c)),
            _ => None,
        },
        None => decimal(text),
    }
}

/// Parses `START:END:COUNT`: COUNT (2 to [`MAX_RADII`]) radii from START to END (END > START).
pub fn parse_eps_range(text: &str) -> Result<Vec<f64>, AttackNameError> {
    let parts: Vec<&str> = text.split(':').collect();
    let [start_text, end_text, count_text] = parts.as_slice() else {
        return Err(problem(text, "a sweep is START:END:COUNT, e.g. 0:16/255:17"));
    };
    let start = parse_eps(start_text)?;
    let end = parse_eps(end_text)?;
    let count: usize = count_text.trim().parse().map_err(|_| problem(text, "COUNT is not a whole number"))?;
    if !(2..=MAX_RADII).contains(&count) {
        return Err(problem(text, &format!("COUNT must be in 2..={MAX_RADII}")));
    }
    if end.partial_cmp(&start) != Some(std::cmp::Ordering::Greater) {
        return Err(problem(text, "END must be larger than START"));
    }
    let steps = (count - 1) as i128;
    let exact = exact_fraction(start_text).zip(exact_fraction(end_text)).filter(|((a, b), (c, d))| {
        // Numerators and the common denominator stay exact in an f64 (below 2^53).
        let limit = 1i128 << 53;
        (a * d).abs() * steps < limit && (c * b).abs() * steps < limit && b * d * steps < limit
    });
    let radii: Vec<f64> = (0..count as i128)
        .map(|i| match exact {
            Some(((a, b), (c, d))) => ((a * d * (steps - i) + c * b * i) as f64) / ((b * d * steps) as f64),
            // The ends as written (as `--eps` reads them); evenly spaced in floating point between.
            None if i == 0 => start,
            None if i == steps => end,
            None => start + (end - start) * i as f64 / steps as f64,
        })
        .collect();
    increasing(text, radii)
}

/// Parses a comma-separated list of radii (at most [`MAX_RADII`], increasing, distinct).
pub fn parse_eps_list(text: &str) -> Result<Vec<f64>, AttackNameError> {
    let radii = text.split(',').filter(|t| !t.trim().is_empty()).map(parse_eps).collect::<Result<Vec<f64>, _>>()?;
    if radii.is_empty() {
        return Err(problem(text, "no radius given"));
    }
    if radii.len() > MAX_RADII {
        return Err(problem(text, &format!("at most {MAX_RADII} radii")));
    }
    increasing(text, radii)
}

/// A radius flag that did not parse, named as both binaries name it.
#[derive(Debug, thiserror::Error)]
#[error("{flag}")]
pub struct SweepFlagError {
    pub flag: &'static str,
    #[source]
    pub source: AttackNameError,
}

/// The radii of `--eps-sweep` (a range, taken first) or `--eps-sweep-list`, as `evaluator eval`
/// and `bench-client compare` take them; empty when neither is given.
pub fn sweep_radii(range: Option<&str>, list: Option<&str>) -> Result<Vec<f64>, SweepFlagError> {
    match (range, list) {
        (Some(range), _) => parse_eps_range(range).map_err(|source| SweepFlagError { flag: "--eps-sweep", source }),
        (None, Some(list)) => parse_eps_list(list).map_err(|source| SweepFlagError { flag: "--eps-sweep-list", source }),
        (None, None) => Ok(Vec::new()),
    }
}

fn increasing(text: &str, radii: Vec<f64>) -> Result<Vec<f64>, AttackNameError> {
    if radii.windows(2).any(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater)) {
        return Err(problem(text, "radii must increase (and be distinct)"));
    }
    Ok(radii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_radii_are_the_radii_written_out() {
        let radii = parse_eps_range("0:16/255:17").unwrap();
        assert_eq!(radii.len(), 17);
        for (i, r) in radii.iter().enumerate() {
            assert_eq!(*r, parse_eps(&format!("{i}/255")).unwrap(), "radius {i}");
        }
        assert_eq!(parse_eps_range("0:0.2:5").unwrap(), vec![0.0, 0.05, 0.1, 0.15, 0.2]);
        assert_eq!(parse_eps_range(" 0.1 : 0.3 : 3 ").unwrap(), vec![0.1, 0.2, 0.3]);
        // Not an exact fraction: evenly spaced in floating point.
        let radii = parse_eps_range("0:1e-1:3").unwrap();
        assert_eq!(radii[0], 0.0);
        assert_eq!(radii[2], 0.1);
        // Ends written as fractions of decimals are the numbers `--eps` reads (rounded twice).
        for (range, end) in [("0:0.3/3:2", "0.3/3"), ("0.7/7:0.9/3:3", "0.9/3"), ("0.1/3:1.1/3:4", "1.1/3")] {
            let radii = parse_eps_range(range).unwrap();
            assert_eq!(*radii.last().unwrap(), parse_eps(end).unwrap(), "{range}");
            assert_eq!(radii[0], parse_eps(range.split(':').next().unwrap()).unwrap(), "{range}");
        }
    }

    #[test]
    fn lists_and_mistakes() {
        assert_eq!(parse_eps_list("1/255, 2/255,0.1").unwrap(), vec![1.0 / 255.0, 2.0 / 255.0, 0.1]);
        for bad in ["0.2,0.1", "0.1,0.1", "", "2", "x"] {
            assert!(parse_eps_list(bad).is_err(), "{bad}");
        }
        for bad in ["0:1", "0:1:1", "0.2:0.1:3", "0:1:x", "0:2:3", &format!("0:1:{}", MAX_RADII + 1)] {
            assert!(parse_eps_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flags_give_the_range_else_the_list_and_errors_name_the_flag() {
        assert_eq!(sweep_radii(Some("0:0.2:5"), Some("0.3")).unwrap(), parse_eps_range("0:0.2:5").unwrap());
        assert_eq!(sweep_radii(None, Some("1/255,2/255")).unwrap(), [1.0 / 255.0, 2.0 / 255.0]);
        assert!(sweep_radii(None, None).unwrap().is_empty());
        assert_eq!(sweep_radii(Some("0:1"), None).unwrap_err().flag, "--eps-sweep");
        assert_eq!(sweep_radii(None, Some("0.2,0.1")).unwrap_err().flag, "--eps-sweep-list");
    }
}
