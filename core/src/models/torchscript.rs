//! Any PyTorch classifier, through TorchScript: a module scripted or traced in PyTorch
//! (`torch.jit.script` / `torch.jit.trace`, saved with `.save`) and loaded by libtorch's own
//! TorchScript loader (nothing else from the file runs). The module sees what our networks see
//! after their normalisation: the checkpoint's per-channel normalisation, when it has one, is
//! applied here before the module, so that attack radii stay in pixel units.
//!
//! Attacks query it through [`Classifier`] like any network: eval mode, parameters frozen (no
//! gradient accumulates in them), gradients flow from the logits to the input through the
//! module's graph. bf16 is a second copy of the module cast with `Module::to(bf16)` where the
//! module allows it; as for our own networks ([`super::PreparedNetwork`]), the fp32 module
//! judges every point.
//!
//! [`TorchScriptModel::from_bytes`] checks what attacks rely on, each with its own error: that
//! libtorch loads it as a module, that it maps `[N, C, H, W]` images in [0, 1] to one
//! `[N, classes]` tensor of finite logits for two batch sizes, that an example's logits do not
//! depend on the rest of its batch, and that gradients reach the input.

use std::io::Cursor;
use std::sync::Arc;

use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

use super::{normalisation_tensors, ModelError, ModelSpec};
use crate::classifier::Classifier;
use crate::guard::{guarded, guarded_result};

/// The architecture name a TorchScript checkpoint records.
pub const TORCHSCRIPT_ARCHITECTURE: &str = "torchscript";

/// Why a TorchScript module cannot be served. Each names the check that failed. Serialisable:
/// the checks run in a sandboxed worker process, which sends its verdict back.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TorchScriptError {
    #[error("libtorch cannot load it as a TorchScript module: {0}")]
    Load(String),
    #[error("its forward fails on a {shape:?} batch of images in [0, 1]: {message}")]
    Forward { shape: Vec<i64>, message: String },
    #[error("its forward returns {0}, not one tensor of logits")]
    NotATensor(String),
    #[error("it maps a {input:?} batch to a {output:?} tensor; [{n}, {classes}] logits were expected ({classes} classes)", n = input.first().copied().unwrap_or(0))]
    WrongOutput { input: Vec<i64>, output: Vec<i64>, classes: i64 },
    #[error("it returns non-finite logits (NaN or infinity) on images in [0, 1]")]
    NonFiniteLogits,
    #[error("an example's logits change with the other examples of its batch (by up to {0:.3e}); the module must be in eval mode and treat examples independently (batch norm in training mode, or a batch size fixed by tracing, break this)")]
    BatchDependent(f64),
    #[error("gradients do not reach the input: {0}; gradient-based attacks would be meaningless")]
    NoInputGradient(String),
    #[error("it does not run in bf16: {0}; evaluate it in fp32")]
    NoBf16(String),
}

/// The useful line of a libtorch error: TorchScript errors put the Python-style exception
/// (`RuntimeError: ...`) after a traceback; others start with it.
pub(crate) fn torch_message(error: &TchError) -> String {
    crate::guard::torch_message(&error.to_string())
}

fn describe(value: &IValue) -> String {
    match value {
        IValue::None => "None".into(),
        IValue::Tuple(items) => format!("a tuple of {} values", items.len()),
        IValue::TensorList(items) => format!("a list of {} tensors", items.len()),
        IValue::GenericList(items) => format!("a list of {} values", items.len()),
        IValue::GenericDict(items) => format!("a dict of {} entries", items.len()),
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a number".into(),
        IValue::String(_) => "a string".into(),
        _ => "a value that is not a tensor".into(),
    }
}

/// Largest code file read by [`takes_gradients_in_code`], and the most code read in all: a
/// module's code is small (a ResNet's is a few KB); a file beyond these is not inflated.
const CODE_FILE_LIMIT: u64 = 4 << 20;
const CODE_TOTAL_LIMIT: u64 = 32 << 20;

/// Whether the module's serialised code (`code/**.py` in the archive) calls autograd:
/// `torch.autograd.grad` or `torch.autograd.backward` (how TorchScript writes `x.backward()`).
/// A module that takes gradients in its forward is a dynamic, test-time defence (AutoAttack's
/// `check_dynamic` counts such calls while the model runs; the code says the same without
/// running it). Code that cannot be read (an archive the zip reader refuses, code too large for
/// the limits) counts as taking gradients: the flag may not be missed. A checksum error at the
/// end of an entry (libtorch does not check them; PyTorch can write files without) still
/// leaves the code read.
fn takes_gradients_in_code(bytes: &[u8]) -> bool {
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(bytes)) else {
        return true;
    };
    let mut read_so_far = 0u64;
    for index in 0..archive.len() {
        let Ok(entry) = archive.by_index(index) else {
            return true;
        };
        let name = entry.name().to_string();
        if !(name.contains("/code/") && name.ends_with(".py")) {
            continue;
        }
        if entry.size() > CODE_FILE_LIMIT || read_so_far + entry.size() > CODE_TOTAL_LIMIT {
            return true;
        }
        let mut code = Vec::new();
        // On an error the bytes read so far stay in `code` (a checksum is checked at the end).
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(entry, CODE_FILE_LIMIT), &mut code);
        read_so_far += code.len() as u64;
        let text = String::from_utf8_lossy(&code);
        if text.contains("torch.autograd.grad(") || text.contains("torch.autograd.backward(") {
            return true;
        }
    }
    false
}

/// Deterministic probe images in [0, 1] (a golden-ratio sequence, different in every pixel).
fn probe_images(n: i64, [c, h, w]: [i64; 3], device: Device) -> Tensor {
    (Tensor::arange(n * c * h * w, (Kind::Double, Device::Cpu)) * 0.618_033_988_749_895)
        .frac()
        .to_kind(Kind::Float)
        .reshape([n, c, h, w])
        .to_device(device)
}

fn load_module(bytes: &[u8], device: Device) -> Result<CModule, TorchScriptError> {
    let mut module =
        CModule::load_data_on_device(&mut Cursor::new(bytes), device).map_err(|e| TorchScriptError::Load(torch_message(&e)))?;
    module.f_set_eval().map_err(|e| TorchScriptError::Load(torch_message(&e)))?;
    freeze(&module)?;
    Ok(module)
}

/// Parameters need no gradient under attack: the input gradient is all attacks take.
fn freeze(module: &CModule) -> Result<(), TorchScriptError> {
    let parameters = module.named_parameters().map_err(|e| TorchScriptError::Load(torch_message(&e)))?;
    for (_, parameter) in parameters {
        let _ = parameter.set_requires_grad(false);
    }
    Ok(())
}

/// A TorchScript classifier on a device, in eval mode, with its parameters frozen.
pub struct TorchScriptModel {
    module: CModule,
    spec: ModelSpec,
    device: Device,
    /// Mean and 1/std as [1, C, 1, 1] tensors on the device.
    normalisation: Option<(Tensor, Tensor)>,
    /// The file's bytes, for the bf16 copy (loaded from what was checked, not the file again).
    bytes: Arc<[u8]>,
    parameter_count: i64,
    /// Its code calls autograd inside the module ([`takes_gradients_in_code`]).
    takes_gradients: bool,
}

impl std::fmt::Debug for TorchScriptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScriptModel").field("spec", &self.spec).field("device", &self.device).finish()
    }
}

impl TorchScriptModel {
    /// Loads the module saved in `bytes` onto `device` and checks it against `spec` (classes,
    /// input shape, normalisation); see the module documentation for the checks.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>, spec: &ModelSpec, device: Device) -> Result<Self, ModelError> {
        let bytes = bytes.into();
        if spec.num_classes < 2 {
            return Err(ModelError::InvalidConfig(format!("num_classes must be at least 2, got {}", spec.num_classes)));
        }
        if spec.input_shape.iter().any(|&d| d < 1) {
            return Err(ModelError::InvalidConfig(format!("input shape must be positive, got {:?}", spec.input_shape)));
        }
        let normalisation = normalisation_tensors(spec, device)?;
        let module = load_module(&bytes, device)?;
        let parameter_count =
            module.named_parameters().map_err(|e| TorchScriptError::Load(torch_message(&e)))?.iter().map(|(_, p)| p.numel() as i64).sum();
        let takes_gradients = takes_gradients_in_code(&bytes);
        let model = TorchScriptModel { module, spec: spec.clone(), device, normalisation, bytes, parameter_count, takes_gradients };
        model.check(&model.module, Kind::Float)?;
        Ok(model)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Number of parameters of the module (`sum(p.numel() for p in module.parameters())`).
    pub fn parameter_count(&self) -> i64 {
        self.parameter_count
    }

    /// A bf16 copy of the module judged by this (fp32) one; [`TorchScriptError::NoBf16`] when
    /// the module cannot be cast or does not run (or give finite logits and input gradients)
    /// in bf16.
    pub fn bf16(&self) -> Result<TorchScriptBf16<'_>, TorchScriptError> {
        let mut module = load_module(&self.bytes, self.device)?;
        let device = self.device;
        // `CModule::to` panics on a libtorch error; the module is dropped if it does.
        guarded(|| module.to(device, Kind::BFloat16, false)).map_err(|e| TorchScriptError::NoBf16(torch_message(&e)))?;
        freeze(&module)?;
        self.check(&module, Kind::BFloat16).map_err(|e| match e {
            TorchScriptError::NoBf16(message) => TorchScriptError::NoBf16(message),
            other => TorchScriptError::NoBf16(other.to_string()),
        })?;
        Ok(TorchScriptBf16 { judge: self, module })
    }

    /// The module's logits (as fp32) for images in [0, 1], the input cast to `kind` after the
    /// normalisation.
    fn forward(&self, module: &CModule, images: &Tensor, kind: Kind) -> Result<Tensor, TchError> {
        let input = match &self.normalisation {
            Some((mean, inv_std)) => images.f_sub(mean)?.f_mul(inv_std)?,
            None => images.shallow_clone(),
        };
        let input = if input.kind() == kind { input } else { input.f_to_kind(kind)? };
        // The module's own code runs here: whatever it raises, or a panic inside tch, comes back
        // as an error.
        guarded_result(|| module.forward_ts(&[input]))?.f_to_kind(Kind::Float)
    }

    fn check(&self, module: &CModule, kind: Kind) -> Result<(), TorchScriptError> {
        let classes = self.spec.num_classes;
        let forward_error = |shape: &[i64], e: &TchError| TorchScriptError::Forward { shape: shape.to_vec(), message: torch_message(e) };
        let expect_shape = |input: &Tensor, output: &Tensor| {
            let n = input.size()[0];
            if output.size() != [n, classes] {
                return Err(TorchScriptError::WrongOutput { input: input.size(), output: output.size(), classes });
            }
            Ok(())
        };
        let finite = |t: &Tensor| bool::try_from(t.isfinite().all()).unwrap_or(false);

        // One tensor of [2, classes] finite logits.
        let two = probe_images(2, self.spec.input_shape, self.device);
        let prepared = match &self.normalisation {
            Some((mean, inv_std)) => (&two - mean) * inv_std,
            None => two.shallow_clone(),
        }
        .to_kind(kind);
        let output = tch::no_grad(|| module.forward_is(&[IValue::Tensor(prepared)])).map_err(|e| forward_error(&two.size(), &e))?;
        let logits = match output {
            IValue::Tensor(t) => t.to_kind(Kind::Float),
            other => return Err(TorchScriptError::NotATensor(describe(&other))),
        };
        expect_shape(&two, &logits)?;
        if !finite(&logits) {
            return Err(TorchScriptError::NonFiniteLogits);
        }

        // Another batch size, holding the same two images first: same shape, same logits.
        let three = Tensor::cat(&[&two, &probe_images(3, self.spec.input_shape, self.device).narrow(0, 2, 1)], 0);
        let logits3 = tch::no_grad(|| self.forward(module, &three, kind)).map_err(|e| forward_error(&three.size(), &e))?;
        expect_shape(&three, &logits3)?;
        if !finite(&logits3) {
            return Err(TorchScriptError::NonFiniteLogits);
        }
        if kind == Kind::Float {
            let difference = f64::try_from((logits3.narrow(0, 0, 2) - &logits).abs().max()).unwrap_or(f64::INFINITY);
            let scale = 1.0 + f64::try_from(logits.abs().max()).unwrap_or(0.0);
            if !(difference <= 1e-3 * scale) {
                return Err(TorchScriptError::BatchDependent(difference));
            }
        }

        // Gradients reach the input, finite and not all zero.
        let input = two.detach().set_requires_grad(true);
        let logits = self.forward(module, &input, kind).map_err(|e| forward_error(&input.size(), &e))?;
        if !logits.requires_grad() {
            return Err(TorchScriptError::NoInputGradient(
                "the logits do not depend differentiably on the input (the module detaches it, or runs without autograd)".into(),
            ));
        }
        let weights: Vec<f32> = (0..classes).map(|k| (0.7 * k as f32 + 0.3).cos()).collect();
        let weights = Tensor::from_slice(&weights).to_device(self.device);
        let objective = (logits * weights).sum(Kind::Float);
        let gradient = Tensor::f_run_backward(&[objective], &[&input], false, false)
            .map_err(|e| TorchScriptError::NoInputGradient(torch_message(&e)))?
            .pop()
            .ok_or_else(|| TorchScriptError::NoInputGradient("libtorch returned no gradient".into()))?;
        if !gradient.defined() {
            return Err(TorchScriptError::NoInputGradient("the input gets no gradient".into()));
        }
        if !finite(&gradient) {
            return Err(TorchScriptError::NoInputGradient("the input gradient is not finite".into()));
        }
        if !(f64::try_from(gradient.abs().max()).unwrap_or(0.0) > 0.0) {
            return Err(TorchScriptError::NoInputGradient(
                "the input gradient is zero everywhere on the probe images (a detached, rounded or otherwise non-differentiable input)"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Classifier for TorchScriptModel {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.forward(&self.module, images, Kind::Float)
    }

    fn device(&self) -> Device {
        self.device
    }

    fn computes_gradients_in_forward(&self) -> bool {
        self.takes_gradients
    }
}

/// A bf16 copy of a TorchScript module; the fp32 module judges (see
/// [`Classifier::judge_logits`]). Inputs and logits stay fp32.
pub struct TorchScriptBf16<'a> {
    judge: &'a TorchScriptModel,
    module: CModule,
}

impl Classifier for TorchScriptBf16<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.judge.forward(&self.module, images, Kind::BFloat16)
    }

    fn device(&self) -> Device {
        self.judge.device
    }

    fn judge_logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.judge.logits(images)
    }

    fn has_separate_judge(&self) -> bool {
        true
    }

    fn computes_gradients_in_forward(&self) -> bool {
        self.judge.takes_gradients
    }
}
