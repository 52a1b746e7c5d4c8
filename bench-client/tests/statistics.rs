//! Statistics across seeds against values worked by hand and against statrs' distributions.

use rfb_bench_client::stats::{describe, mean, sample_sd, t_cdf, t_quantile, welch};
use statrs::distribution::{ContinuousCDF, StudentsT};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn t_quantiles_match_tables() {
    // Two-sided 95% critical values of Student's t (any statistics table).
    let table = [
        (1.0, 12.706204736174707),
        (2.0, 4.302652729911275),
        (3.0, 3.182446305284263),
        (4.0, 2.776445105197793),
        (10.0, 2.228138851986274),
        (30.0, 2.042272456301238),
    ];
    for (df, expected) in table {
        let q = t_quantile(0.975, df);
        assert!(close(q, expected, 1e-8), "df {df}: {q} vs {expected}");
        // Symmetric, and statrs' CDF inverts it.
        assert!(close(t_quantile(0.025, df), -expected, 1e-8));
        assert!(close(t_cdf(q, df), 0.975, 1e-10));
        let reference = StudentsT::new(0.0, 1.0, df).unwrap();
        assert!(close(reference.cdf(q), 0.975, 1e-10));
    }
    // df = 2 has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t²)).
    for t in [-3.0, -0.5, 0.0, 1.0, 4.302652729911275] {
        let exact = 0.5 + t / (2.0 * (2.0f64 + t * t).sqrt());
        assert!(close(t_cdf(t, 2.0), exact, 1e-12), "t {t}");
    }
    assert!(t_quantile(0.975, 0.0).is_nan());
    assert!(t_quantile(1.0, 3.0).is_nan());
}

#[test]
fn description_worked_by_hand() {
    // 1, 2, 3, 4: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, sample variance
    // 5/3, sd 1.2909944; half-width t_{0.975,3} · sd / 2 = 3.1824463 · 1.2909944 / 2 = 2.0542603.
    let d = describe(&[1.0, 2.0, 3.0, 4.0], 0.95);
    assert_eq!(d.n, 4);
    assert_eq!(d.mean, 2.5);
    assert!(close(d.sd, (5.0f64 / 3.0).sqrt(), 1e-12));
    assert!(close(d.ci_low, 2.5 - 2.054260256760879, 1e-8), "{}", d.ci_low);
    assert!(close(d.ci_high, 2.5 + 2.054260256760879, 1e-8), "{}", d.ci_high);
    // Two seeds: 54.5 and 56.5, sd sqrt(2), half-width 12.7062047 · sqrt(2) / sqrt(2) = 12.7062047.
    let d = describe(&[54.5, 56.5], 0.95);
    assert!(close(d.ci_high - d.mean, 12.706204736174707, 1e-7));
    // A 90% interval is narrower: t_{0.95,3} = 2.3533634.
    let d90 = describe(&[1.0, 2.0, 3.0, 4.0], 0.90);
    assert!(close(d90.ci_high - 2.5, 2.353363434801823 * (5.0f64 / 3.0).sqrt() / 2.0, 1e-8));
    // One value: no spread, no interval.
    let one = describe(&[7.0], 0.95);
    assert_eq!(one.mean, 7.0);
    assert!(one.sd.is_nan() && one.ci_low.is_nan() && one.ci_high.is_nan());
    assert_eq!(mean(&[2.0, 4.0]), 3.0);
    assert!(close(sample_sd(&[2.0, 4.0]), 2.0f64.sqrt(), 1e-12));
}

#[test]
fn welch_with_one_degree_of_freedom() {
    // a = 1, 3: mean 2, variance 2, s²/n = 1. b = 0, 0, 0: no spread. se = 1, t = 2,
    // df = 1² / (1² / 1) = 1 (Cauchy): p = 1 - 2 atan(2) / π = 0.2951672353.
    let w = welch(&[1.0, 3.0], &[0.0, 0.0, 0.0], 0.95);
    assert_eq!(w.difference, 2.0);
    assert!(close(w.se, 1.0, 1e-12));
    assert!(close(w.t, 2.0, 1e-12));
    assert!(close(w.df, 1.0, 1e-12));
    assert!(close(w.p_value, 1.0 - 2.0 * 2.0f64.atan() / std::f64::consts::PI, 1e-9), "{}", w.p_value);
    assert!(close(w.p_value, 0.2951672353008665, 1e-9));
    // Interval: 2 ± 12.7062047 · 1.
    assert!(close(w.ci_low, 2.0 - 12.706204736174707, 1e-7));
}

#[test]
fn welch_with_two_degrees_of_freedom() {
    // a = 1, 2, 3: mean 2, variance 1, s²/n = 1/3; b = 0, 0: none. t = 2 / sqrt(1/3) = 2√3,
    // df = 2; p = 1 - t / sqrt(2 + t²) = 1 - 2√3 / √14 = 0.0741799002.
    let w = welch(&[1.0, 2.0, 3.0], &[0.0, 0.0], 0.95);
    assert!(close(w.t, 2.0 * 3.0f64.sqrt(), 1e-12));
    assert!(close(w.df, 2.0, 1e-12));
    assert!(close(w.p_value, 0.07417990022744858, 1e-9), "{}", w.p_value);
    // Swapping the samples flips the sign, not the p-value.
    let s = welch(&[0.0, 0.0], &[1.0, 2.0, 3.0], 0.95);
    assert!(close(s.t, -w.t, 1e-12) && close(s.p_value, w.p_value, 1e-12));
}

/// P(|T| > t) for Student's t by Simpson's rule on x = tan θ, independent of statrs.
fn two_sided_p_by_quadrature(t: f64, df: f64) -> f64 {
    let density = |theta: f64| {
        let x = theta.tan();
        (1.0 + x * x / df).powf(-(df + 1.0) / 2.0) / theta.cos().powi(2)
    };
    let simpson = |a: f64, b: f64, n: usize| {
        let h = (b - a) / n as f64;
        let mut s = density(a) + density(b);
        for i in 1..n {
            s += if i % 2 == 1 { 4.0 } else { 2.0 } * density(a + i as f64 * h);
        }
        s * h / 3.0
    };
    let edge = std::f64::consts::FRAC_PI_2 - 1e-9;
    1.0 - simpson(-t.atan(), t.atan(), 200_000) / simpson(-edge, edge, 200_000)
}

#[test]
fn welch_with_unequal_variances_by_hand() {
    // a = 1, 2, 3: mean 2, s² = 1, s²/n = 1/3. b = 4, 6, 8, 10: mean 7, s² = 20/3, s²/n = 5/3.
    // Difference -5, se² = 2, t = -5/√2 = -3.5355339;
    // df = 2² / ((1/3)²/2 + (5/3)²/3) = 4 / (1/18 + 25/27) = 216/53 = 4.0754717;
    // p = P(|T_df| > 3.5355339) = 0.0233767676 (numerical integration of the t density).
    let w = welch(&[1.0, 2.0, 3.0], &[4.0, 6.0, 8.0, 10.0], 0.95);
    assert_eq!(w.difference, -5.0);
    assert!(close(w.se, 2.0f64.sqrt(), 1e-12));
    assert!(close(w.t, -5.0 / 2.0f64.sqrt(), 1e-12));
    assert!(close(w.df, 216.0 / 53.0, 1e-12), "{}", w.df);
    assert!(close(w.p_value, 0.02337676760030205, 1e-7), "{}", w.p_value);
    assert!(close(w.p_value, two_sided_p_by_quadrature(5.0 / 2.0f64.sqrt(), 216.0 / 53.0), 1e-7));
    // Interval with the same df: -5 ± t_{0.975, 216/53} · √2.
    let half = StudentsT::new(0.0, 1.0, 216.0 / 53.0).unwrap().inverse_cdf(0.975) * 2.0f64.sqrt();
    assert!(close(w.ci_high, -5.0 + half, 1e-9));
    // The interval excludes 0 exactly when p < 0.05.
    assert!(w.ci_high < 0.0 && w.p_value < 0.05);
}

#[test]
fn welch_undefined_cases() {
    assert!(welch(&[1.0], &[2.0, 3.0], 0.95).p_value.is_nan(), "one seed on a side");
    let flat = welch(&[5.0, 5.0], &[5.0, 5.0], 0.95);
    assert_eq!(flat.difference, 0.0);
    assert!(flat.p_value.is_nan(), "no spread anywhere");
    assert!(welch(&[f64::INFINITY, 1.0], &[1.0, 2.0], 0.95).p_value.is_nan());
}
