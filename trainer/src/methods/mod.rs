//! Training methods by name.

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
pub mod trades;

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
pub use trades::Trades;

use crate::method::TrainingMethod;
use crate::presets::MethodSettings;

pub const METHOD_NAMES: &[&str] = &[
    "natural", "sat", "trades", "rslad", "absld", "ard", "adaad", "fair-ard", "frl", "bat", "cfa",
];

/// Builds method `name` for `num_classes` classes with the recipe's settings.
pub fn build(name: &str, num_classes: usize, settings: &MethodSettings) -> Result<Box<dyn TrainingMethod>, String> {
    Ok(match name {
        "natural" => Box::new(Natural),
        "sat" => Box::new(Sat),
        "trades" => Box::new(Trades { beta: settings.trades.beta }),
        "rslad" => Box::new(Rslad::new(settings.rslad)),
        "absld" => Box::new(Absld::new(num_classes, settings.absld)),
        "ard" => Box::new(Ard::new(settings.ard)),
        "adaad" => Box::new(AdaAd::new(settings.adaad)),
        "fair-ard" => Box::new(FairArd::new(num_classes, settings.fair_ard)),
        "frl" => Box::new(Frl::new(num_classes, settings.frl)),
        "bat" => Box::new(Bat::new(settings.bat)),
        "cfa" => Box::new(Cfa::new(settings.cfa)),
        other => return Err(format!("unknown method '{other}'; known: {}", METHOD_NAMES.join(", "))),
    })
}
