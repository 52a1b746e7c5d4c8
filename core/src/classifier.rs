//! What attacks query, and what every model the benchmark evaluates implements: logits of a
//! batch of images in [0, 1], in eval mode. Its own module so that the layers read one way:
//! models implement it, attacks use it, and neither depends on the other.

use tch::{Device, TchError, Tensor};

/// What attacks query: logits of a batch of images in [0, 1], in eval mode.
///
/// Every forward pass can fail (a user's TorchScript module raises, a layout or an allocation
/// libtorch refuses): the methods return libtorch's error instead of panicking, and the attacks
/// pass it up with `?` ([`crate::guard::guarded`] turns the panicking forms of tch into these
/// errors where no fallible form exists).
pub trait Classifier {
    /// Logits of the attack network: the model itself, or a faster copy of it (batch norm folded,
    /// channels-last, bf16).
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError>;
    fn device(&self) -> Device;

    /// Logits of the model as it is evaluated: the points counted robust and the clean accuracy
    /// are decided by these. The same as [`Classifier::logits`] unless the attack network is a
    /// copy ([`crate::models::PreparedNetwork`]).
    fn judge_logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.logits(images)
    }

    /// True when the attack network may disagree with the judge by more than rounding (a bf16
    /// copy): attacks then ask the judge wherever they decide whether a point is still robust,
    /// at every iteration. A copy that only rounds differently (batch norm folded, another
    /// memory layout) leaves those decisions to the attack network, and the final count to the
    /// judge, with a second attack by the judge itself where the two disagree
    /// ([`crate::attacks::run_points`]).
    fn has_separate_judge(&self) -> bool {
        false
    }

    /// The judge as a classifier of its own, when the attack network is a copy: what
    /// [`crate::attacks::run_points`] re-attacks with where the copy and the judge disagree.
    fn exact(&self) -> Option<&dyn Classifier> {
        None
    }

    /// True when the model's own code takes gradients inside its forward pass (a TorchScript
    /// module calling `torch.autograd.grad` or `backward`): AutoAttack's dynamic-defence flag.
    fn computes_gradients_in_forward(&self) -> bool {
        false
    }
}
