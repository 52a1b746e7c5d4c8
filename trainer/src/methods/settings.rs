//! Every method's own hyper-parameters, one field per method that has some.

use serde::{Deserialize, Serialize};

use super::absld::AbsldSettings;
use super::adaad::AdaAdSettings;
use super::ard::ArdSettings;
use super::bat::BatSettings;
use super::cfa::CfaSettings;
use super::distillation::DistillationSettings;
use super::fair_ard::FairArdSettings;
use super::frl::FrlSettings;
use super::trades::TradesSettings;
use super::Method;

/// Every method's own hyper-parameters for one data set (the recipes fill them); a run reads
/// its method's part. Each field is named as its method ([`Method::as_str`] with `_` for `-`),
/// which is how a run's record finds the part to keep ([`MethodSettings::key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSettings {
    pub trades: TradesSettings,
    pub rslad: DistillationSettings,
    pub absld: AbsldSettings,
    pub ard: ArdSettings,
    pub adaad: AdaAdSettings,
    pub fair_ard: FairArdSettings,
    pub frl: FrlSettings,
    pub bat: BatSettings,
    pub cfa: CfaSettings,
}

impl MethodSettings {
    /// The name of the field `method` reads (present only for methods with settings).
    pub fn key(method: Method) -> String {
        method.as_str().replace('-', "_")
    }

    /// The scale of the distillation KL of `method`; `None` for a method without one.
    pub fn kl_scale_mut(&mut self, method: Method) -> Option<&mut f64> {
        match method {
            Method::Rslad => Some(&mut self.rslad.kl_scale),
            Method::Absld => Some(&mut self.absld.kl_scale),
            Method::FairArd => Some(&mut self.fair_ard.kl_scale),
            Method::Ard => Some(&mut self.ard.kl_scale),
            Method::Adaad => Some(&mut self.adaad.kl_scale),
            Method::Natural | Method::Sat | Method::Trades | Method::Frl | Method::Bat | Method::Cfa => None,
        }
    }
}
