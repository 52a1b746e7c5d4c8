//! Which checkpoints a model name on the command line stands for.
//!
//! The evaluator lists checkpoints by their path under its models directory, e.g.
//! `absld-s1/best`. A checkpoint's *run* is that path without a trailing checkpoint name
//! (`best`, `last`, `epoch-NNNN`), and the run's *group* is the run with a trailing
//! `-s<seed>` removed: `absld-s1/best` is run `absld-s1`, group `absld`, seed 1.
//!
//! `--models absld,rslad` makes one row per name. Each name `X` (or `LABEL=X`, to choose the
//! row label) is matched, in this order, against:
//! 1. a checkpoint named exactly `X` (a single checkpoint, one seed; an imported model, which
//!    records no seed, counts as seed 0);
//! 2. checkpoints whose group or run is `X`;
//! 3. checkpoints whose manifest method is `X`;
//!
//! and in 2 and 3 only checkpoints named `--checkpoint` (default `best`) or checkpoint
//! directories that are runs themselves are taken. The seed is the manifest's, else the one in
//! the name. `--seeds 0,1` keeps only those seeds. Two checkpoints with the same seed under one
//! name are an error (name them more precisely). Resume states (`resume-NNNN/...`) are ignored.

use std::collections::BTreeMap;

use anyhow::bail;
use rfb_proto::v1::ModelInfo;

/// One requested row: a label and the pattern it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRequest {
    pub label: String,
    pub pattern: String,
}

/// Parses `a,b` or `ABSLD=absld,RSLAD=rslad`.
pub fn parse_models(list: &str) -> anyhow::Result<Vec<ModelRequest>> {
    let mut requests: Vec<ModelRequest> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (label, pattern) = match item.split_once('=') {
            Some((l, p)) => (l.trim().to_string(), p.trim().to_string()),
            None => (item.to_string(), item.to_string()),
        };
        if label.is_empty() || pattern.is_empty() {
            bail!("bad model '{item}': use NAME or LABEL=NAME");
        }
        if requests.iter().any(|r| r.label == label) {
            bail!("model label '{label}' is given twice");
        }
        requests.push(ModelRequest { label, pattern });
    }
    if requests.is_empty() {
        bail!("no models given");
    }
    Ok(requests)
}

/// A checkpoint name split into run, group, seed and checkpoint name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    pub run: String,
    pub group: String,
    pub seed: Option<u64>,
    /// `best`, `last`, `epoch-0010`; None when the checkpoint directory is the run itself.
    pub checkpoint: Option<String>,
}

fn is_checkpoint_name(component: &str) -> bool {
    component == "best"
        || component == "last"
        || component.strip_prefix("epoch-").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits `runs/absld-s1/best` into run `runs/absld-s1`, group `runs/absld`, seed 1, checkpoint `best`.
pub fn name_parts(name: &str) -> NameParts {
    let name = name.trim_matches('/');
    let (run, checkpoint) = match name.rsplit_once('/') {
        Some((parent, last)) if is_checkpoint_name(last) => (parent.to_string(), Some(last.to_string())),
        _ if is_checkpoint_name(name) => (String::new(), Some(name.to_string())),
        _ => (name.to_string(), None),
    };
    let (group, seed) = split_seed(&run);
    NameParts { run, group, seed, checkpoint }
}

/// `absld-s12` -> (`absld`, Some(12)); names without a `-s<digits>` suffix are their own group.
pub fn split_seed(run: &str) -> (String, Option<u64>) {
    if let Some(pos) = run.rfind("-s") {
        let digits = &run[pos + 2..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(seed) = digits.parse() {
                return (run[..pos].to_string(), Some(seed));
            }
        }
    }
    (run.to_string(), None)
}

/// One checkpoint chosen for a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub seed: u64,
    pub info: ModelInfo,
}

/// The checkpoints of one row, in seed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub request: ModelRequest,
    pub runs: Vec<Selected>,
}

fn is_resume_state(name: &str) -> bool {
    name.split('/').any(|c| c.starts_with("resume-"))
}

/// Resolves every request against the listed checkpoints. Errors name what was available.
pub fn select(
    requests: &[ModelRequest],
    available: &[ModelInfo],
    seeds: Option<&[u64]>,
    checkpoint: &str,
) -> anyhow::Result<Vec<Selection>> {
    let usable: Vec<&ModelInfo> = available.iter().filter(|m| !is_resume_state(&m.name)).collect();
    let mut selections = Vec::new();
    for request in requests {
        let pattern = request.pattern.trim_matches('/');
        let checkpoint_ok = |m: &&ModelInfo| {
            let parts = name_parts(&m.name);
            parts.checkpoint.as_deref().is_none_or(|c| c == checkpoint)
        };
        let mut matched: Vec<&ModelInfo> = usable.iter().copied().filter(|m| m.name.trim_matches('/') == pattern).collect();
        let exact = !matched.is_empty();
        if matched.is_empty() {
            matched = usable
                .iter()
                .copied()
                .filter(|m| {
                    let parts = name_parts(&m.name);
                    parts.group == pattern || parts.run == pattern
                })
                .filter(checkpoint_ok)
                .collect();
        }
        if matched.is_empty() {
            matched = usable.iter().copied().filter(|m| m.method == pattern).filter(checkpoint_ok).collect();
        }
        if matched.is_empty() {
            let names: Vec<&str> = usable.iter().map(|m| m.name.as_str()).collect();
            bail!(
                "model '{}' matches no checkpoint (by name, by run prefix before -s<seed> with checkpoint '{checkpoint}', or by method); the servers list: {}",
                request.pattern,
                if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
            );
        }
        let mut by_seed: BTreeMap<u64, Vec<&ModelInfo>> = BTreeMap::new();
        for m in matched {
            let seed = match m.seed.or(name_parts(&m.name).seed) {
                Some(s) => s,
                // One checkpoint named exactly: a single run, whatever its seed.
                None if exact => 0,
                None => bail!("checkpoint '{}' (model '{}') has no seed in its manifest or its name (-s<seed>)", m.name, request.label),
            };
            by_seed.entry(seed).or_default().push(m);
        }
        if let Some(wanted) = seeds {
            by_seed.retain(|s, _| wanted.contains(s));
            if by_seed.is_empty() {
                bail!("model '{}' has none of the seeds {:?}", request.label, wanted);
            }
        }
        let mut runs = Vec::new();
        for (seed, models) in by_seed {
            if models.len() > 1 {
                let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                bail!(
                    "model '{}' has {} checkpoints for seed {seed} ({}); name one run group more precisely",
                    request.label,
                    models.len(),
                    names.join(", ")
                );
            }
            runs.push(Selected { seed, info: models[0].clone() });
        }
        selections.push(Selection { request: request.clone(), runs });
    }
    Ok(selections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, method: &str, seed: Option<u64>) -> ModelInfo {
        ModelInfo { name: name.into(), method: method.into(), seed, ..Default::default() }
    }

    #[test]
    fn names_split_into_run_group_seed() {
        let p = name_parts("absld-s1/best");
        assert_eq!((p.run.as_str(), p.group.as_str(), p.seed, p.checkpoint.as_deref()), ("absld-s1", "absld", Some(1), Some("best")));
        let p = name_parts("runs/rslad-s10/epoch-0005");
        assert_eq!((p.group.as_str(), p.seed, p.checkpoint.as_deref()), ("runs/rslad", Some(10), Some("epoch-0005")));
        let p = name_parts("teacher");
        assert_eq!((p.run.as_str(), p.group.as_str(), p.seed, p.checkpoint), ("teacher", "teacher", None, None));
        assert_eq!(split_seed("my-sat-s"), ("my-sat-s".to_string(), None));
    }

    #[test]
    fn groups_by_prefix_then_method() {
        let available = vec![
            info("absld-s0/best", "absld", Some(0)),
            info("absld-s0/last", "absld", Some(0)),
            info("absld-s1/best", "absld", Some(1)),
            info("absld-s1/resume-0003/model", "absld", Some(1)),
            info("rslad-s0/best", "rslad", Some(0)),
            info("baseline-a/best", "rslad", Some(7)),
            info("teacher/best", "trades", None),
        ];
        let requests = parse_models("absld,RS=rslad").unwrap();
        let s = select(&requests, &available, None, "best").unwrap();
        assert_eq!(
            s[0].runs.iter().map(|r| (r.seed, r.info.name.as_str())).collect::<Vec<_>>(),
            [(0, "absld-s0/best"), (1, "absld-s1/best")]
        );
        // Prefix wins over method: only rslad-s0, not baseline-a.
        assert_eq!(s[1].request.label, "RS");
        assert_eq!(s[1].runs.len(), 1);
        assert_eq!(s[1].runs[0].info.name, "rslad-s0/best");
        // Method match when no prefix matches; last checkpoints on request.
        let s = select(&parse_models("trades").unwrap(), &available, None, "best");
        assert!(s.unwrap_err().to_string().contains("no seed"));
        let s = select(&parse_models("absld").unwrap(), &available, Some(&[1]), "last");
        assert!(s.is_err(), "seed 1 has no 'last' checkpoint");
        let s = select(&parse_models("absld").unwrap(), &available, Some(&[0]), "last").unwrap();
        assert_eq!(s[0].runs[0].info.name, "absld-s0/last");
        // Exact name.
        let s = select(&parse_models("one=absld-s1/best").unwrap(), &available, None, "best").unwrap();
        assert_eq!(s[0].runs.len(), 1);
        // Exact name without a seed (an imported model): one run, seed 0.
        let s = select(&parse_models("t=teacher/best").unwrap(), &available, None, "best").unwrap();
        assert_eq!((s[0].runs.len(), s[0].runs[0].seed), (1, 0));
        assert!(select(&parse_models("nothing").unwrap(), &available, None, "best").is_err());
        assert!(parse_models("a,a").is_err());
    }

    #[test]
    fn duplicate_seeds_are_refused() {
        let available = vec![info("x-s0/best", "sat", Some(0)), info("y-s0/best", "sat", Some(0))];
        let err = select(&parse_models("sat").unwrap(), &available, None, "best").unwrap_err();
        assert!(err.to_string().contains("seed 0"), "{err}");
    }
}
