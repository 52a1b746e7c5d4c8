//! A request's one way through the evaluator: **validate** (this module: every field against
//! the limits, every attack spec into its canonical form, the cost against the server's
//! budget), **prepare** ([`crate::catalog`]: the model, its weights and the data it will touch),
//! **queue** ([`crate::worker`]), **compute** ([`crate::engine`]) and **store**
//! ([`crate::cache`]). The limits, the errors (one variant per gRPC status) and the prepared
//! forms live here, so that the catalog and the engine both depend on this module and not on
//! each other.

mod cost;
mod error;
mod names;
mod spec;

use std::path::PathBuf;

use rfb_core::checkpoint::{self, Manifest};
use rfb_core::data::{DatasetKind, Split};
use rfb_proto::v1::{AttackResult, ClassResult, ComponentResult, EvaluateRequest, Metrics, Precision, SanityFlags};
use tch::Device;

use crate::cache::StoredResult;

pub use cost::{passes_per_example, CostEstimate, DEFAULT_MAX_JOB_COST};
pub use error::{is_out_of_memory, EngineError, PathRedactor};
pub use names::{requested_attacks, MAX_ATTACK_NAMES_BYTES};
pub use spec::{
    attack_display_name, autoattack_targets, build_attack, canonical_spec, default_step_size, is_autoattack, AUTOATTACK_COMPONENTS,
    AUTOATTACK_RAND_EOT, AUTOATTACK_STEPS, AUTOATTACK_TARGETS, DEFAULT_CW_KAPPA, DEFAULT_CW_STEPS, DEFAULT_EPS, DEFAULT_PGD_STEPS,
    SQUARE_QUERIES,
};

/// Largest number of steps (iterations, or Square queries) a request may ask for.
pub const MAX_STEPS: i64 = 10_000;
pub const MAX_RESTARTS: i64 = 100;
pub const MAX_KAPPA: f64 = 10_000.0;
/// Largest batch size a request may ask for.
pub const MAX_BATCH_SIZE: i64 = 4096;
/// Largest shard count of a request.
pub const MAX_SHARDS: i64 = 65_536;
/// Largest number of attacks in one request.
pub const MAX_ATTACKS: usize = 64;
/// Largest number of components of one AUTOATTACK_CUSTOM spec.
pub const MAX_COMPONENTS: usize = 16;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 1024;
/// Longest data set or component name, in bytes.
pub const MAX_FIELD_BYTES: usize = 64;
/// Default of `--max-queue`: jobs that may wait (the running one not counted).
pub const DEFAULT_MAX_QUEUE: usize = 64;
/// Default of `--max-queue-per-client`.
pub const DEFAULT_MAX_QUEUE_PER_CLIENT: usize = 16;

/// What a server admits; `evaluator eval` has none of these limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest estimated cost of a job, in forward+backward passes ([`CostEstimate`]).
    pub max_job_cost: u64,
    /// Jobs that may wait in the queue, all clients together.
    pub max_queue: usize,
    /// Jobs one client (one token, else one peer address) may have waiting.
    pub max_queue_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_job_cost: DEFAULT_MAX_JOB_COST, max_queue: DEFAULT_MAX_QUEUE, max_queue_per_client: DEFAULT_MAX_QUEUE_PER_CLIENT }
    }
}

pub fn split_from_proto(split: i32) -> Result<Split, EngineError> {
    use rfb_proto::v1::Split as P;
    match P::try_from(split) {
        Ok(P::Unspecified | P::Test) => Ok(Split::Test),
        Ok(P::Validation) => Ok(Split::Validation),
        Ok(P::Train) => Ok(Split::Train),
        Err(_) => Err(EngineError::InvalidArgument(format!("split: unknown value {split} (TEST, VALIDATION or TRAIN)"))),
    }
}

pub fn split_to_proto(split: Split) -> rfb_proto::v1::Split {
    use rfb_proto::v1::Split as P;
    match split {
        Split::Test => P::Test,
        Split::Validation => P::Validation,
        Split::Train => P::Train,
    }
}

pub fn precision_from_proto(precision: i32) -> Result<Precision, EngineError> {
    match Precision::try_from(precision) {
        Ok(Precision::Unspecified | Precision::Fp32) => Ok(Precision::Fp32),
        Ok(Precision::Bf16) => Ok(Precision::Bf16),
        Ok(Precision::Fp32Fast) => Ok(Precision::Fp32Fast),
        Err(_) => Err(EngineError::InvalidArgument(format!("precision: unknown value {precision} (FP32, FP32_FAST or BF16)"))),
    }
}

/// The batch size a request asks for (0: `default`).
pub fn batch_size(requested: i64, default: i64) -> Result<i64, EngineError> {
    match requested {
        0 => Ok(default),
        b if (1..=MAX_BATCH_SIZE).contains(&b) => Ok(b),
        b => Err(EngineError::InvalidArgument(format!("batch_size must be in 1..={MAX_BATCH_SIZE} (0: the server's default), got {b}"))),
    }
}

/// INVALID_ARGUMENT naming the field `model` unless `name` is a plausible model name: at most
/// [`MAX_MODEL_NAME_BYTES`], no control characters (NUL included). Whether it names a
/// checkpoint inside the models directory is the catalog's question.
pub fn check_model_name(name: &str) -> Result<(), EngineError> {
    if name.len() > MAX_MODEL_NAME_BYTES {
        return Err(EngineError::InvalidArgument(format!("model: the model name is {} bytes; at most {MAX_MODEL_NAME_BYTES}", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(EngineError::InvalidArgument("model: the model name contains a control character".into()));
    }
    Ok(())
}

/// The checks that need nothing but the request: every field a client sets (the size and
/// characters of the names, the enumerations, the batch size, the sign of examples_per_class,
/// the shard, the attacks' names, the number of attacks and every field of every attack spec,
/// see [`requested_attacks`]). The first thing
/// done with a request, before any file is read or anything sized by the request is
/// allocated; each refusal is INVALID_ARGUMENT and names its field.
pub fn check_fields(request: &EvaluateRequest) -> Result<(), EngineError> {
    let invalid = |message: String| Err(EngineError::InvalidArgument(message));
    check_model_name(&request.model)?;
    if request.dataset.len() > MAX_FIELD_BYTES {
        return invalid(format!("dataset: the data set name is {} bytes; at most {MAX_FIELD_BYTES}", request.dataset.len()));
    }
    if request.dataset.chars().any(char::is_control) {
        return invalid("dataset: the data set name contains a control character".into());
    }
    split_from_proto(request.split)?;
    precision_from_proto(request.precision)?;
    batch_size(request.batch_size, 1)?;
    if request.examples_per_class < 0 {
        return invalid(format!("examples_per_class must not be negative, got {}", request.examples_per_class));
    }
    shard_from_proto(request.shard.as_ref())?;
    let attacks = requested_attacks(request)?;
    if attacks.is_empty() {
        return invalid("no attacks requested; list at least one AttackSpec, or name them in attack_names".into());
    }
    if attacks.len() > MAX_ATTACKS {
        return invalid(format!("{} attacks requested; at most {MAX_ATTACKS} per request", attacks.len()));
    }
    for (index, attack) in attacks.iter().enumerate() {
        if attack.components.len() > MAX_COMPONENTS {
            return invalid(format!(
                "attacks[{index}].components: {} AutoAttack components listed; at most {MAX_COMPONENTS}",
                attack.components.len()
            ));
        }
        checked_spec(index, attack)?;
    }
    Ok(())
}

/// An attack spec in canonical form ([`canonical_spec`]), its refusal naming it as
/// `attacks[index]`.
pub fn checked_spec(index: usize, spec: &rfb_proto::v1::AttackSpec) -> Result<rfb_proto::v1::AttackSpec, EngineError> {
    canonical_spec(spec).map_err(|e| match e {
        EngineError::InvalidArgument(message) => EngineError::InvalidArgument(format!("attacks[{index}]: {message}")),
        other => other,
    })
}

/// Manifest fields that say where a checkpoint came from and how it was made, not what it
/// computes; every other field (and any added later) is part of [`model_sha256`].
const DESCRIPTIVE_MANIFEST_FIELDS: &[&str] = &[
    "dataset",
    "method",
    "hyperparameters",
    "seed",
    "epoch",
    "selection",
    "parameter_count",
    "code_version",
    "libtorch_version",
    "created_at",
    "source",
];

/// sha256 (hex) of everything in a manifest that changes the function the model computes: the
/// weights' sha256, the architecture, the classes and their names, the input shape, the
/// normalisation, the format version, and any field added later. The weights alone do not
/// identify a model: the same weights imported again with another `--mean/--std` are another
/// function, so loaded models and cached results are keyed on this.
pub fn model_sha256(manifest: &Manifest) -> String {
    let mut fields = match serde_json::to_value(manifest) {
        Ok(serde_json::Value::Object(fields)) => fields,
        // Cannot happen for this struct; hashing its Debug form still tells manifests apart.
        _ => return crate::cache::cache_key(&serde_json::Value::String(format!("{manifest:?}"))),
    };
    for field in DESCRIPTIVE_MANIFEST_FIELDS {
        fields.remove(*field);
    }
    crate::cache::cache_key(&serde_json::Value::Object(fields))
}

/// One shard of an evaluation's examples: the j-th example of the class-balanced subset (in
/// file order, counting from 0) belongs to shard `j mod count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: i64,
    pub count: i64,
}

impl ShardSpec {
    /// Positions (in the class-balanced subset of `examples`) of this shard's examples.
    pub fn positions(&self, examples: i64) -> Vec<i64> {
        (self.index..examples).step_by(self.count as usize).collect()
    }

    /// Number of this shard's examples out of `examples`.
    pub fn len(&self, examples: i64) -> i64 {
        if examples <= self.index {
            0
        } else {
            (examples - self.index - 1) / self.count + 1
        }
    }

    pub fn is_empty(&self, examples: i64) -> bool {
        self.len(examples) == 0
    }

    pub fn to_proto(self) -> rfb_proto::v1::Shard {
        rfb_proto::v1::Shard { index: self.index, count: self.count }
    }
}

/// The shard a request asks for: `None` for the whole evaluation (no shard, or a count of 1).
pub fn shard_from_proto(shard: Option<&rfb_proto::v1::Shard>) -> Result<Option<ShardSpec>, EngineError> {
    let Some(shard) = shard else { return Ok(None) };
    if !(1..=MAX_SHARDS).contains(&shard.count) {
        return Err(EngineError::InvalidArgument(format!("shard.count must be in 1..={MAX_SHARDS}, got {}", shard.count)));
    }
    if !(0..shard.count).contains(&shard.index) {
        return Err(EngineError::InvalidArgument(format!("shard.index must be in 0..{} (the count), got {}", shard.count, shard.index)));
    }
    Ok((shard.count > 1).then_some(ShardSpec { index: shard.index, count: shard.count }))
}

/// INVALID_ARGUMENT when a shard count is larger than the evaluation's examples (some shard
/// would be empty).
pub fn check_shard(shard: Option<ShardSpec>, examples: i64) -> Result<(), EngineError> {
    match shard {
        Some(s) if s.count > examples => Err(EngineError::InvalidArgument(format!(
            "shard.count is {} but the evaluation has only {examples} examples; every shard must have one",
            s.count
        ))),
        _ => Ok(()),
    }
}

/// INVALID_ARGUMENT unless every class of the split (`counts`, from its labels) has
/// `examples_per_class` examples (0: the whole split).
pub fn check_examples_per_class(examples_per_class: i64, counts: &[i64], dataset: DatasetKind, split: Split) -> Result<(), EngineError> {
    if examples_per_class < 0 {
        return Err(EngineError::InvalidArgument(format!("examples_per_class must not be negative, got {examples_per_class}")));
    }
    if let Some((class, &available)) = counts.iter().enumerate().filter(|(_, &c)| c < examples_per_class).min_by_key(|(_, &c)| c) {
        return Err(EngineError::InvalidArgument(format!(
            "examples_per_class is {examples_per_class} but class {class} of {dataset} ({split}) has only {available} examples"
        )));
    }
    if counts.is_empty() || counts.iter().sum::<i64>() == 0 {
        return Err(EngineError::FailedPrecondition(format!("data set {dataset} ({split}) has no examples")));
    }
    Ok(())
}

/// One attack of a validated request.
#[derive(Debug, Clone)]
pub struct PreparedAttack {
    /// The spec with every default filled in.
    pub spec: rfb_proto::v1::AttackSpec,
    /// Display name, e.g. `PGD-20`.
    pub name: String,
    /// What determines the result; its sha256 is `cache_key`.
    pub key_material: serde_json::Value,
    pub cache_key: String,
}

/// A request that passed every check that needs no tensors, against the model and the data it
/// will touch.
#[derive(Debug, Clone)]
pub struct PreparedEvaluation {
    /// The model's name as given (relative to the models directory, `/`-separated).
    pub model: String,
    /// Canonical checkpoint directory.
    pub model_dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of the weights file as read now (equal to the manifest's).
    pub weights_sha256: String,
    /// [`model_sha256`] of `manifest`: what loaded models are keyed on.
    pub model_sha256: String,
    pub dataset: DatasetKind,
    pub split: Split,
    /// sha256 of the split's contents as this process loaded it (pixels, labels, class names;
    /// [`crate::catalog::split_sha256`]).
    pub data_sha256: String,
    /// Examples of each class in the split (from its labels).
    pub class_counts: Vec<i64>,
    /// 0: the whole split.
    pub examples_per_class: i64,
    pub batch_size: i64,
    pub precision: Precision,
    /// The shard evaluated (`None`: every example).
    pub shard: Option<ShardSpec>,
    pub attacks: Vec<PreparedAttack>,
}

impl PreparedEvaluation {
    /// Number of examples the evaluation covers (its shard's, when it is one).
    pub fn examples(&self) -> i64 {
        let all = self.all_examples();
        match self.shard {
            Some(shard) => shard.len(all),
            None => all,
        }
    }

    /// Number of examples of the unsharded evaluation.
    pub fn all_examples(&self) -> i64 {
        if self.examples_per_class > 0 {
            self.examples_per_class.saturating_mul(self.class_counts.len() as i64)
        } else {
            self.class_counts.iter().sum()
        }
    }
}

/// Everything that determines one attack's result, as JSON (its sha256 is the cache key):
/// besides the request, the model's function ([`model_sha256`]: weights and every manifest
/// field that changes what the model computes), the contents of the data split (its sha256 as
/// loaded, so another copy of "cifar10 test" never shares entries with this one), the hash of
/// the sources that decide attack results (so that no result of older code is ever served) and
/// the kind of device (a GPU rounds differently from a CPU). The batch size is part of it at
/// fp32-fast only: attacks draw their randomness per example and keep their state per point,
/// so at fp32 and bf16 the batch a point is in does not change its result, but fp32-fast's
/// folded channels-last copy rounds differently with the batch. A shard is (its counts are of
/// other examples); absent for an unsharded request.
pub fn key_material(job: &PreparedEvaluation, spec: &rfb_proto::v1::AttackSpec, device: Device) -> serde_json::Value {
    let kind = rfb_proto::v1::AttackKind::try_from(spec.kind).map(|k| k.as_str_name()).unwrap_or("unknown");
    let mut material = serde_json::json!({
        "schema": crate::cache::CACHE_SCHEMA,
        "weights_sha256": job.weights_sha256,
        "model_sha256": job.model_sha256,
        "dataset": job.dataset.name(),
        "data_sha256": job.data_sha256,
        "split": job.split.as_str(),
        "examples_per_class": job.examples_per_class,
        "attack": {
            "kind": kind,
            "eps": spec.eps,
            "steps": spec.steps,
            "step_size": spec.step_size,
            "restarts": spec.restarts,
            "kappa": spec.kappa,
            "components": spec.components,
        },
        "seed": spec.seed,
        "precision": job.precision.as_str_name(),
        "device": if device.is_cuda() { "cuda" } else { "cpu" },
        "code_version": [crate::evaluator_version(), checkpoint::code_version(), checkpoint::libtorch_version()],
        "attack_source": rfb_core::attacks::SOURCE_HASH,
    });
    if job.precision == Precision::Fp32Fast {
        material["batch_size"] = serde_json::json!(job.batch_size);
    }
    if let Some(shard) = job.shard {
        material["shard"] = serde_json::json!({"index": shard.index, "count": shard.count});
    }
    material
}

/// Assembles the wire result of one attack from its stored form.
pub fn attack_result(job: &PreparedEvaluation, attack: &PreparedAttack, stored: &StoredResult, cached: bool) -> AttackResult {
    let accuracy = rfb_proto::metrics::class_accuracy(&stored.correct, &stored.total);
    let summary = rfb_proto::metrics::summarize(&accuracy);
    AttackResult {
        attack: Some(attack.spec.clone()),
        attack_name: stored.attack_name.clone(),
        classes: stored
            .class_names
            .iter()
            .zip(stored.correct.iter().zip(&stored.total))
            .enumerate()
            .map(|(k, (name, (&correct, &total)))| ClassResult {
                class_name: name.clone(),
                correct,
                total,
                predicted_as: stored.confusion.get(k).cloned().unwrap_or_default(),
            })
            .collect(),
        metrics: Some(Metrics {
            average: summary.average,
            worst: summary.worst,
            worst_10_percent: summary.worst_10_percent,
            nsd: summary.nsd,
        }),
        sanity: stored.sanity.map(|s| SanityFlags {
            randomised: s.randomised,
            probabilities_not_logits: s.probabilities_not_logits,
            zero_gradient_fraction: s.zero_gradient_fraction,
            possible_gradient_masking: s.possible_gradient_masking,
            dynamic: s.dynamic,
            dlr_zero_gradient_points: s.dlr_zero_gradient_points,
            square_robust_accuracy_drop: s.square_robust_accuracy_drop,
            square_lowered_robust_accuracy: s.square_lowered_robust_accuracy,
            targets_requested: s.targets_requested,
            targets_used: s.targets_used,
        }),
        device: stored.device.clone(),
        elapsed_seconds: stored.elapsed_seconds,
        cached,
        versions: Some(crate::versions()),
        model: job.model.clone(),
        weights_sha256: job.weights_sha256.clone(),
        dataset: job.dataset.name().to_string(),
        split: split_to_proto(job.split) as i32,
        examples_per_class: job.examples_per_class,
        precision: job.precision as i32,
        shard: job.shard.map(ShardSpec::to_proto),
        components: stored
            .components
            .iter()
            .map(|c| ComponentResult {
                name: c.name.clone(),
                seconds: c.seconds,
                attacked: c.attacked,
                robust_after: c.robust_after.correct.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfb_proto::v1::{AttackKind, AttackSpec};

    fn spec(kind: AttackKind) -> AttackSpec {
        AttackSpec { kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn defaults_are_filled_in() {
        let pgd = canonical_spec(&AttackSpec { seed: 3, ..spec(AttackKind::Pgd) }).unwrap();
        assert_eq!(pgd.eps, Some(8.0 / 255.0));
        assert_eq!(pgd.steps, Some(20));
        assert_eq!(pgd.step_size, Some(2.0 / 255.0));
        assert_eq!(pgd.restarts, Some(1));
        assert_eq!(pgd.seed, 3);
        let cw = canonical_spec(&spec(AttackKind::CwInf)).unwrap();
        assert_eq!((cw.steps, cw.kappa), (Some(30), Some(50.0)));
        let clean = canonical_spec(&AttackSpec { eps: Some(0.1), seed: 9, ..spec(AttackKind::Clean) }).unwrap();
        assert_eq!(clean, spec(AttackKind::Clean));
        assert_eq!(attack_display_name(&pgd, 10).unwrap(), "PGD-20");
        assert_eq!(attack_display_name(&clean, 10).unwrap(), "Clean");
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        let cases = [
            (AttackSpec { eps: Some(-0.1), ..spec(AttackKind::Pgd) }, "eps"),
            (AttackSpec { eps: Some(1.5), ..spec(AttackKind::Fgsm) }, "eps"),
            (AttackSpec { steps: Some(0), ..spec(AttackKind::Pgd) }, "steps"),
            (AttackSpec { steps: Some(10_001), ..spec(AttackKind::CwInf) }, "steps"),
            (AttackSpec { kappa: Some(1.0), ..spec(AttackKind::Pgd) }, "kappa"),
            (AttackSpec { components: vec!["fab".into()], ..spec(AttackKind::AutoattackCustom) }, "component"),
            (spec(AttackKind::AutoattackCustom), "components"),
            (spec(AttackKind::Unspecified), "unspecified"),
            (AttackSpec { kind: 42, ..Default::default() }, "kind"),
        ];
        for (spec, word) in cases {
            let error = canonical_spec(&spec).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{spec:?}");
            assert!(error.to_string().contains(word), "{error} should name {word}");
        }
    }

    #[test]
    fn custom_components_build_in_order() {
        let custom = canonical_spec(&AttackSpec {
            components: vec!["APGD-CE".into(), "square".into()],
            steps: Some(10),
            ..spec(AttackKind::AutoattackCustom)
        })
        .unwrap();
        assert_eq!(custom.components, vec!["apgd-ce", "square"]);
        assert_eq!(attack_display_name(&custom, 10).unwrap(), "AutoAttack(APGD-CE+Square)@10");
        // Fewer iterations are named so, never plain AutoAttack; the cost follows them.
        let standard = canonical_spec(&spec(AttackKind::AutoattackStandard)).unwrap();
        assert_eq!(attack_display_name(&standard, 10).unwrap(), "AutoAttack");
        let quick = canonical_spec(&AttackSpec { steps: Some(5), ..spec(AttackKind::AutoattackStandard) }).unwrap();
        assert_eq!(attack_display_name(&quick, 10).unwrap(), "AutoAttack@5");
        assert_eq!(cost::passes_per_example(&quick, 10), 5 + 45 + 90 + 5);
        let rand = canonical_spec(&AttackSpec { steps: Some(3), ..spec(AttackKind::AutoattackRand) }).unwrap();
        assert_eq!(attack_display_name(&rand, 10).unwrap(), "AutoAttack-rand@3");
        assert_eq!(cost::passes_per_example(&rand, 10), 2 * 3 * 20);
        assert_eq!(
            canonical_spec(&AttackSpec { steps: Some(0), ..spec(AttackKind::AutoattackRand) }).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn shards_are_checked_and_cover_every_example_once() {
        use rfb_proto::v1::Shard;
        for (index, count, word) in [(0, 0, "count"), (0, -1, "count"), (3, 3, "index"), (-1, 2, "index"), (0, MAX_SHARDS + 1, "count")] {
            let error = shard_from_proto(Some(&Shard { index, count })).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(error.to_string().contains(word), "{error}");
        }
        assert_eq!(shard_from_proto(None).unwrap(), None);
        assert_eq!(shard_from_proto(Some(&Shard { index: 0, count: 1 })).unwrap(), None, "one shard is the whole");
        let examples = 23;
        let mut seen = Vec::new();
        for index in 0..4 {
            let shard = shard_from_proto(Some(&Shard { index, count: 4 })).unwrap().unwrap();
            let positions = shard.positions(examples);
            assert_eq!(positions.len() as i64, shard.len(examples));
            seen.extend(positions);
        }
        seen.sort();
        assert_eq!(seen, (0..examples).collect::<Vec<_>>());
        let big = ShardSpec { index: 0, count: 24 };
        assert_eq!(check_shard(Some(big), examples).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(check_shard(Some(ShardSpec { index: 22, count: 23 }), examples).is_ok());
    }

    fn job(precision: Precision, batch_size: i64, data_sha256: &str) -> PreparedEvaluation {
        let manifest = Manifest {
            format_version: 1,
            model: rfb_core::models::ModelSpec::new("digits-cnn", 10, [1, 8, 8]),
            class_names: (0..10).map(|k| k.to_string()).collect(),
            dataset: "digits".into(),
            method: "natural".into(),
            hyperparameters: serde_json::json!({"epochs": 2}),
            seed: Some(0),
            epoch: Some(2),
            selection: None,
            weights_sha256: "ab".repeat(32),
            parameter_count: 1000,
            code_version: "x".into(),
            libtorch_version: "y".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            source: None,
        };
        PreparedEvaluation {
            model: "m".into(),
            model_dir: "/models/m".into(),
            model_sha256: model_sha256(&manifest),
            weights_sha256: manifest.weights_sha256.clone(),
            manifest,
            dataset: DatasetKind::Digits,
            split: Split::Test,
            data_sha256: data_sha256.into(),
            class_counts: vec![36; 10],
            examples_per_class: 3,
            batch_size,
            precision,
            shard: None,
            attacks: Vec::new(),
        }
    }

    /// The cache key sees what changes a result and nothing else: the batch size at fp32-fast
    /// (its folded copy rounds per batch) but not at fp32 or bf16, the split's contents, and
    /// every manifest field that changes the model's function, not the descriptive ones.
    #[test]
    fn the_cache_key_follows_what_changes_a_result() {
        let pgd = canonical_spec(&spec(AttackKind::Pgd)).unwrap();
        let key = |job: &PreparedEvaluation| crate::cache::cache_key(&key_material(job, &pgd, Device::Cpu));
        for precision in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(key(&job(precision, 7, "d1")), key(&job(precision, 13, "d1")), "{precision:?}");
        }
        assert_ne!(key(&job(Precision::Fp32Fast, 7, "d1")), key(&job(Precision::Fp32Fast, 13, "d1")));
        assert_eq!(key(&job(Precision::Fp32Fast, 7, "d1")), key(&job(Precision::Fp32Fast, 7, "d1")));
        assert_ne!(key(&job(Precision::Fp32, 7, "d1")), key(&job(Precision::Fp32, 7, "d2")), "another split's contents");

        let base = job(Precision::Fp32, 7, "d1");
        let with = |change: fn(&mut Manifest)| {
            let mut changed = base.clone();
            change(&mut changed.manifest);
            changed.model_sha256 = model_sha256(&changed.manifest);
            changed
        };
        let function_changes: [fn(&mut Manifest); 5] = [
            |m| m.model.normalization = Some(rfb_core::models::Normalisation { mean: vec![0.5], std: vec![0.25] }),
            |m| m.model.architecture = "digits-cnn-wide".into(),
            |m| m.class_names[0] = "zero".into(),
            |m| m.model.num_classes = 9,
            |m| m.weights_sha256 = "cd".repeat(32),
        ];
        for change in function_changes {
            let changed = with(change);
            assert_ne!(changed.model_sha256, base.model_sha256, "{:?}", changed.manifest);
            assert_ne!(key(&changed), key(&base));
        }
        let descriptive: [fn(&mut Manifest); 4] = [
            |m| m.created_at = "2027-01-01T00:00:00Z".into(),
            |m| m.method = "imported".into(),
            |m| m.epoch = None,
            |m| m.source = Some(rfb_core::checkpoint::Source { file: "x.pt".into(), sha256: "00".into(), format: "state_dict".into() }),
        ];
        for change in descriptive {
            let changed = with(change);
            assert_eq!(changed.model_sha256, base.model_sha256, "{:?}", changed.manifest);
            assert_eq!(key(&changed), key(&base));
        }
    }

    /// Every field is checked before anything else, and a refusal names its field.
    #[test]
    fn every_field_is_checked_and_named() {
        let good = EvaluateRequest { model: "m".into(), attacks: vec![spec(AttackKind::Clean)], ..Default::default() };
        assert!(check_fields(&good).is_ok());
        let cases: Vec<(EvaluateRequest, &str)> = vec![
            (EvaluateRequest { model: "m".repeat(MAX_MODEL_NAME_BYTES + 1), ..good.clone() }, "model:"),
            (EvaluateRequest { model: "a\0b".into(), ..good.clone() }, "model:"),
            (EvaluateRequest { model: "a\nb".into(), ..good.clone() }, "model:"),
            (EvaluateRequest { dataset: "d".repeat(MAX_FIELD_BYTES + 1), ..good.clone() }, "dataset:"),
            (EvaluateRequest { dataset: "cifar\u{7}".into(), ..good.clone() }, "dataset:"),
            (EvaluateRequest { split: 17, ..good.clone() }, "split:"),
            (EvaluateRequest { precision: -1, ..good.clone() }, "precision:"),
            (EvaluateRequest { batch_size: -2, ..good.clone() }, "batch_size"),
            (EvaluateRequest { examples_per_class: -1, ..good.clone() }, "examples_per_class"),
            (EvaluateRequest { shard: Some(rfb_proto::v1::Shard { index: 2, count: 2 }), ..good.clone() }, "shard.index"),
            (EvaluateRequest { attacks: Vec::new(), ..good.clone() }, "attacks"),
            (
                EvaluateRequest {
                    attacks: vec![spec(AttackKind::Clean), AttackSpec { eps: Some(2.0), ..spec(AttackKind::Pgd) }],
                    ..good.clone()
                },
                "attacks[1]: PGD: eps",
            ),
            (
                EvaluateRequest { attacks: vec![AttackSpec { kappa: Some(f64::NAN), ..spec(AttackKind::CwInf) }], ..good.clone() },
                "attacks[0]: CW_INF: kappa",
            ),
            (
                EvaluateRequest {
                    attacks: vec![AttackSpec { components: vec!["x".into(); 17], ..spec(AttackKind::AutoattackCustom) }],
                    ..good.clone()
                },
                "attacks[0].components",
            ),
        ];
        for (request, field) in cases {
            let error = check_fields(&request).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(error.to_string().contains(field), "{error} should name {field}");
        }
    }

    #[test]
    fn out_of_memory_messages_are_recognised() {
        let oom = EngineError::from_torch_message("PGD-20", "CUDA out of memory. Tried to allocate 2.00 GiB");
        assert_eq!(oom.code(), tonic::Code::ResourceExhausted);
        let cpu = EngineError::from_torch_message("x", "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory");
        assert_eq!(cpu.code(), tonic::Code::ResourceExhausted);
        assert_eq!(EngineError::from_torch_message("x", "shape mismatch").code(), tonic::Code::Internal);
    }
}
