//! Training methods by name.

mod absld;
pub mod adaad;
pub mod ard;
pub mod bat;
pub mod cfa;
mod distillation;
pub mod fair_ard;
pub mod frl;
mod natural;
mod rslad;
mod sat;
mod trades;

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
use crate::temperature::TemperatureSchedule;

pub const METHOD_NAMES: &[&str] = &[
    "natural", "sat", "trades", "rslad", "absld", "ard", "adaad", "fair-ard", "frl", "bat", "cfa",
];

/// Options that only some methods read.
#[derive(Debug, Clone)]
pub struct MethodOptions {
    pub num_classes: usize,
    /// TRADES' beta (6 in the paper).
    pub trades_beta: f64,
    /// ABSLD's temperature learning rate and bounds.
    pub temperature: TemperatureSchedule,
    /// Weight of the adversarial term in RSLAD/ABSLD (Eq. 11), 5/6.
    pub alpha: f64,
}

pub fn build(name: &str, options: &MethodOptions) -> Result<Box<dyn TrainingMethod>, String> {
    Ok(match name {
        "natural" => Box::new(Natural),
        "sat" => Box::new(Sat),
        "trades" => Box::new(Trades {
            beta: options.trades_beta,
        }),
        "rslad" => Box::new(Rslad::new(options.alpha)),
        "absld" => Box::new(Absld::new(
            options.num_classes,
            options.alpha,
            options.temperature,
        )),
        "ard" => Box::new(Ard::default()),
        "adaad" => Box::new(AdaAd::default()),
        "fair-ard" => Box::new(FairArd::new(options.num_classes, options.alpha)),
        "frl" => Box::new(Frl::new(options.num_classes)),
        "bat" => Box::new(Bat::default()),
        "cfa" => Box::new(Cfa::new()),
        other => {
            return Err(format!(
                "unknown method '{other}'; known: {}",
                METHOD_NAMES.join(", ")
            ))
        }
    })
}
