//! Statistics across seeds: mean, sample standard deviation, Student-t confidence intervals and
//! Welch's two-sample t-test (Welch–Satterthwaite degrees of freedom, two-sided).
//!
//! Undefined quantities are NaN: the spread and interval of a single value, a test with fewer
//! than two values on either side, a test where both samples have no spread.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean of the values (NaN when there are none).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample variance (divides by n - 1; NaN for fewer than two values).
pub fn sample_variance(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return f64::NAN;
    }
    let m = mean(values);
    values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64
}

/// Sample standard deviation (divides by n - 1; NaN for fewer than two values).
pub fn sample_sd(values: &[f64]) -> f64 {
    sample_variance(values).sqrt()
}

/// The `p` quantile of Student's t distribution with `df` degrees of freedom (statrs' inverse
/// CDF). NaN when `df` is not positive or `p` is outside (0, 1).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 || p.is_nan() || p <= 0.0 || p >= 1.0 {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(p),
        Err(_) => f64::NAN,
    }
}

/// P(T <= x) for Student's t with `df` degrees of freedom.
pub fn t_cdf(x: f64, df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 || x.is_nan() {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.cdf(x),
        Err(_) => f64::NAN,
    }
}

/// Mean, sample SD and a two-sided Student-t interval of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1).
    pub sd: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Describes a sample: mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n).
pub fn describe(values: &[f64], confidence: f64) -> Description {
    let n = values.len();
    let m = mean(values);
    let sd = sample_sd(values);
    let (ci_low, ci_high) = if n >= 2 && sd.is_finite() {
        let half = t_quantile(0.5 + confidence / 2.0, (n - 1) as f64) * sd / (n as f64).sqrt();
        (m - half, m + half)
    } else {
        (f64::NAN, f64::NAN)
    };
    Description { n, mean: m, sd, ci_low, ci_high }
}

/// Welch's unequal-variance t-test of mean(a) - mean(b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Welch {
    pub difference: f64,
    /// Standard error of the difference, sqrt(s_a²/n_a + s_b²/n_b).
    pub se: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Interval of the difference at the requested confidence, with `df` degrees of freedom.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Welch's t-test: t = (m_a - m_b) / se, df = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1)),
/// p = 2 · (1 - F_t(|t|; df)).
pub fn welch(a: &[f64], b: &[f64], confidence: f64) -> Welch {
    let difference = mean(a) - mean(b);
    let nan = Welch { difference, se: f64::NAN, t: f64::NAN, df: f64::NAN, p_value: f64::NAN, ci_low: f64::NAN, ci_high: f64::NAN };
    if a.len() < 2 || b.len() < 2 || !difference.is_finite() {
        return nan;
    }
    let va = sample_variance(a) / a.len() as f64;
    let vb = sample_variance(b) / b.len() as f64;
    let se2 = va + vb;
    if se2.is_nan() || se2 <= 0.0 || !se2.is_finite() {
        return nan;
    }
    let se = se2.sqrt();
    let t = difference / se;
    let df = se2 * se2 / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    let p_value = (2.0 * (1.0 - t_cdf(t.abs(), df))).clamp(0.0, 1.0);
    let half = t_quantile(0.5 + confidence / 2.0, df) * se;
    Welch { difference, se, t, df, p_value, ci_low: difference - half, ci_high: difference + half }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sd_by_hand() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum 32, sample variance 32/7.
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&v), 5.0);
        assert!((sample_variance(&v) - 32.0 / 7.0).abs() < 1e-12);
        assert!(sample_sd(&[1.0]).is_nan());
        assert!(mean(&[]).is_nan());
    }
}
