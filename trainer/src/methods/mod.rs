//! The training methods, one per file, and [`Method`], the name that picks one.
//!
//! Adding a method: its file here (a [`TrainingMethod`] and, where it has hyper-parameters, a
//! settings struct), its variant of [`Method`] with the arms the compiler then asks for in this
//! file, a field of [`MethodSettings`] named as the method (where it has settings), and its
//! recipe values in `presets.rs`.

pub mod absld;
pub mod adaad;
pub mod ard;
pub mod bat;
pub mod cfa;
pub mod distillation;
pub mod fair_ard;
pub mod frl;
mod natural;
pub mod rslad;
mod sat;
mod settings;
pub mod trades;

use std::fmt;

pub use absld::Absld;
pub use adaad::AdaAd;
pub use ard::Ard;
pub use bat::Bat;
pub use cfa::Cfa;
pub use fair_ard::FairArd;
pub use frl::Frl;
pub use natural::Natural;
pub use rslad::Rslad;
pub use sat::Sat;
pub use settings::MethodSettings;
pub use trades::Trades;

use crate::method::TrainingMethod;

/// A training method by name: the CLI's `--method`, a grid file's `methods`, the `method` of
/// `run.json` and of checkpoint manifests all spell it as [`Method::as_str`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Method {
    /// Natural training: cross-entropy on clean images (the non-robust baseline).
    Natural,
    /// Standard adversarial training (Madry et al.): cross-entropy on PGD examples.
    Sat,
    /// TRADES: clean cross-entropy + beta KL to the adversarial prediction (trains the teachers).
    Trades,
    /// RSLAD: robust soft label distillation from a teacher (--teacher).
    Rslad,
    /// ABSLD: RSLAD with class-wise teacher temperatures adapted to the student's risks (--teacher).
    Absld,
    /// ARD: adversarially robust distillation, temperature 30 (--teacher).
    Ard,
    /// AdaAD: adaptive adversarial distillation (--teacher).
    Adaad,
    /// Fair-ARD: ARD or RSLAD (--fair-ard-variant) re-weighted towards vulnerable classes (--teacher).
    FairArd,
    /// FRL: Reweight + Remargin fine-tuning of a robust model (--init).
    Frl,
    /// BAT: balance adversarial training.
    Bat,
    /// CFA: class-wise calibrated fair adversarial training (TRADES + CFA, with weight averaging).
    Cfa,
}

/// The [`Method`] a string names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method '{name}'; known: {}", Method::known())]
pub struct UnknownMethod {
    pub name: String,
}

impl Method {
    /// Every method, in the order the help and the tables list them.
    pub const ALL: [Method; 11] = [
        Method::Natural,
        Method::Sat,
        Method::Trades,
        Method::Rslad,
        Method::Absld,
        Method::Ard,
        Method::Adaad,
        Method::FairArd,
        Method::Frl,
        Method::Bat,
        Method::Cfa,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Natural => "natural",
            Method::Sat => "sat",
            Method::Trades => "trades",
            Method::Rslad => "rslad",
            Method::Absld => "absld",
            Method::Ard => "ard",
            Method::Adaad => "adaad",
            Method::FairArd => "fair-ard",
            Method::Frl => "frl",
            Method::Bat => "bat",
            Method::Cfa => "cfa",
        }
    }

    /// The names, comma-separated (for messages).
    pub fn known() -> String {
        Method::ALL.map(Method::as_str).join(", ")
    }

    /// Distils from a frozen teacher (a grid gives these runs its teacher run).
    pub fn is_distillation(self) -> bool {
        match self {
            Method::Rslad | Method::Absld | Method::Ard | Method::Adaad | Method::FairArd => true,
            Method::Natural | Method::Sat | Method::Trades | Method::Frl | Method::Bat | Method::Cfa => false,
        }
    }

    /// The method for `num_classes` classes with its part of `settings`.
    pub fn build(self, num_classes: usize, settings: &MethodSettings) -> Box<dyn TrainingMethod> {
        match self {
            Method::Natural => Box::new(Natural),
            Method::Sat => Box::new(Sat),
            Method::Trades => Box::new(Trades { beta: settings.trades.beta }),
            Method::Rslad => Box::new(Rslad::new(settings.rslad)),
            Method::Absld => Box::new(Absld::new(num_classes, settings.absld)),
            Method::Ard => Box::new(Ard::new(settings.ard)),
            Method::Adaad => Box::new(AdaAd::new(settings.adaad)),
            Method::FairArd => Box::new(FairArd::new(num_classes, settings.fair_ard)),
            Method::Frl => Box::new(Frl::new(num_classes, settings.frl)),
            Method::Bat => Box::new(Bat::new(settings.bat)),
            Method::Cfa => Box::new(Cfa::new(settings.cfa)),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths in tables apply.
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = UnknownMethod;
    fn from_str(name: &str) -> Result<Method, UnknownMethod> {
        Method::ALL.into_iter().find(|m| m.as_str() == name).ok_or_else(|| UnknownMethod { name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_spelling_is_the_same_in_the_cli_serde_and_display() {
        assert_eq!(Method::value_variants(), &Method::ALL[..]);
        for method in Method::ALL {
            let name = method.as_str();
            assert_eq!(method.to_string(), name);
            assert_eq!(name.parse::<Method>(), Ok(method));
            assert_eq!(<Method as ValueEnum>::from_str(name, false), Ok(method));
            assert_eq!(serde_json::to_value(method).unwrap(), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<Method>(serde_json::json!(name)).unwrap(), method);
        }
        assert_eq!(format!("{:<9}|", Method::FairArd), "fair-ard |");
        let unknown = "fancy".parse::<Method>().unwrap_err().to_string();
        assert_eq!(unknown, "unknown method 'fancy'; known: natural, sat, trades, rslad, absld, ard, adaad, fair-ard, frl, bat, cfa");
    }
}
