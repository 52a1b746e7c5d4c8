//! Results files built by hand for the tests.
#![allow(dead_code)]

use rfb_bench_client::attacks::{parse_attacks, Common, DEFAULT_ATTACKS};
use rfb_bench_client::results::{AttackRun, ModelResults, Results, SeedRun, ServerInfo, Settings, FORMAT, FORMAT_VERSION};

pub const CIFAR10: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// A deterministic pseudo-random number in [0, 1) from a few integers.
pub fn noise(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ c.wrapping_mul(0x1656_67B1_9E37_79F9) ^ d;
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x % 1_000_000) as f64 / 1_000_000.0
}

pub fn settings(eps: f64) -> Settings {
    Settings {
        dataset: String::new(),
        split: rfb_bench_client::split::Split::Test,
        examples_per_class: 100,
        batch_size: 0,
        precision: rfb_bench_client::precision::Precision::Fp32,
        attacks: parse_attacks(DEFAULT_ATTACKS, &Common { eps, step_size: None, seed: 0 }).unwrap(),
        confidence: 0.95,
        uncertainty: Default::default(),
        sweep: None,
    }
}

/// Two or more models on CIFAR-10-like classes with plausible class-wise accuracies that fall
/// with the attack's strength; harder classes (cat, bird, deer, dog) lower; the second model
/// fairer (its hard classes less far behind).
pub fn cifar_like(models: &[&str], seeds: &[u64], per_class: i64) -> Results {
    let s = settings(8.0 / 255.0);
    let base = [83.0, 54.0, 50.0, 48.0, 47.0];
    let difficulty = [0.3, 0.1, 1.2, 2.0, 1.1, 1.5, 0.5, 0.4, 0.2, 0.3];
    let mut out = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        let fairness = 1.0 - 0.35 * mi as f64;
        let mut runs = Vec::new();
        for &seed in seeds {
            let attacks = s
                .attacks
                .iter()
                .enumerate()
                .map(|(ai, a)| {
                    let correct: Vec<i64> = (0..10)
                        .map(|k| {
                            let acc = base[ai] + 12.0 - 14.0 * difficulty[k] * fairness
                                + 6.0 * (noise(mi as u64, seed, ai as u64, k as u64) - 0.5);
                            ((acc.clamp(0.0, 100.0) / 100.0) * per_class as f64).round() as i64
                        })
                        .collect();
                    AttackRun {
                        attack: a.label.clone(),
                        attack_name: a.label.clone(),
                        class_names: CIFAR10.iter().map(|c| c.to_string()).collect(),
                        correct,
                        total: vec![per_class; 10],
                        device: "cpu".into(),
                        elapsed_seconds: 1.0,
                        cached: false,
                        sanity: None,
                        ran: None,
                        evaluator_version: "test".into(),
                        server_metrics: None,
                        components: Vec::new(),
                        confusion: Vec::new(),
                    }
                })
                .collect();
            runs.push(SeedRun {
                seed,
                model: format!("{model}-s{seed}/best"),
                method: model.to_string(),
                architecture: "resnet18".into(),
                dataset: "cifar10".into(),
                weights_sha256: format!("{:064x}", seed + 17 * mi as u64),
                server: "http://127.0.0.1:1".into(),
                attacks,
                shards: Vec::new(),
                sweep: Vec::new(),
            });
        }
        out.push(ModelResults { label: model.to_string(), class_names: CIFAR10.iter().map(|c| c.to_string()).collect(), runs });
    }
    Results {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_unix: 0,
        command: "bench-client compare --models test".into(),
        client_version: "test".into(),
        proto_version: "rfb.v1".into(),
        settings: s,
        servers: vec![ServerInfo { endpoint: "http://127.0.0.1:1".into(), evaluator_version: "test".into(), ..Default::default() }],
        models: out,
        failures: Vec::new(),
        run: Default::default(),
    }
}

/// Independent reference: class accuracies (percent) from counts.
pub fn accuracies(correct: &[i64], total: &[i64]) -> Vec<f64> {
    correct.iter().zip(total).map(|(&c, &t)| 100.0 * c as f64 / t as f64).collect()
}

/// Independent reference metrics: (avg, worst, worst-10%, nsd).
pub fn reference_metrics(acc: &[f64]) -> (f64, f64, f64, f64) {
    let n = acc.len() as f64;
    let avg = acc.iter().sum::<f64>() / n;
    let mut sorted = acc.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = ((0.1 * n).ceil() as usize).max(1);
    let w10 = sorted[..k].iter().sum::<f64>() / k as f64;
    let sd = (acc.iter().map(|a| (a - avg) * (a - avg)).sum::<f64>() / n).sqrt();
    (avg, sorted[0], w10, sd / avg)
}

/// Independent reference: mean and sample SD.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let m = values.iter().sum::<f64>() / n;
    let v = values.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

/// Where a CIFAR-10 class's broken points mostly go (cat <-> dog, automobile <-> truck, ...).
pub const PARTNER: [usize; 10] = [8, 9, 4, 5, 7, 3, 3, 4, 0, 1];

/// A confusion matrix consistent with the counts: each class's broken points go 60% (rounded
/// down) to its partner class, the rest one at a time round the other classes.
pub fn confusion(correct: &[i64], total: &[i64]) -> Vec<Vec<i64>> {
    let c = correct.len();
    let mut matrix = vec![vec![0i64; c]; c];
    for k in 0..c {
        matrix[k][k] = correct[k];
        let broken = total[k] - correct[k];
        let partner = PARTNER[k % PARTNER.len()] % c;
        let to_partner = if partner == k { 0 } else { broken * 6 / 10 };
        matrix[k][partner] += to_partner;
        let others: Vec<usize> = (1..c).map(|i| (k + i) % c).filter(|&j| j != partner).collect();
        let others = if others.is_empty() { vec![partner] } else { others };
        for i in 0..(broken - to_partner) as usize {
            matrix[k][others[i % others.len()]] += 1;
        }
    }
    matrix
}

/// Fills every attack's confusion matrix from its counts.
pub fn add_confusions(results: &mut Results) {
    for model in &mut results.models {
        for run in &mut model.runs {
            for attack in &mut run.attacks {
                attack.confusion = confusion(&attack.correct, &attack.total);
            }
        }
    }
}

/// The radii of the synthetic sweep: 0, 2, 4, 8, 12 and 16 /255.
pub const SWEEP_RADII: [f64; 6] = [0.0, 2.0 / 255.0, 4.0 / 255.0, 8.0 / 255.0, 12.0 / 255.0, 16.0 / 255.0];

/// A PGD sweep for every run: class-wise accuracy falling geometrically from the clean counts at
/// radius 0 through the PGD-20 counts at 8/255 (equal to them there), with consistent confusions.
pub fn add_sweep(results: &mut Results) {
    use rfb_bench_client::results::{SweepPoint, SweepSetting};
    let pgd = results.settings.attacks.iter().find(|a| a.kind == "PGD").expect("a PGD attack").clone();
    let clean = results.settings.attacks.iter().find(|a| a.kind == "CLEAN").expect("a clean evaluation").label.clone();
    results.settings.sweep =
        Some(SweepSetting { attack: rfb_bench_client::results::AttackSetting { eps: None, ..pgd.clone() }, radii: SWEEP_RADII.to_vec() });
    for model in &mut results.models {
        for run in &mut model.runs {
            let c0 = run.attack(&clean).unwrap().correct.clone();
            let base = run.attack(&pgd.label).unwrap().clone();
            run.sweep = SWEEP_RADII
                .iter()
                .map(|&eps| {
                    let correct: Vec<i64> = c0
                        .iter()
                        .zip(&base.correct)
                        .map(|(&a, &b)| if a == 0 { 0 } else { (a as f64 * (b as f64 / a as f64).powf(eps * 255.0 / 8.0)).round() as i64 })
                        .collect();
                    let confusion = confusion(&correct, &base.total);
                    SweepPoint { eps, run: rfb_bench_client::results::AttackRun { correct, confusion, ..base.clone() } }
                })
                .collect();
        }
    }
}
