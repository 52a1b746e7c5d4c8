//! Training methods by name.

mod absld;
mod distillation;
mod natural;
mod rslad;
mod sat;
mod trades;

pub use absld::Absld;
pub use natural::Natural;
pub use rslad::Rslad;
pub use sat::Sat;
pub use trades::Trades;

use crate::method::TrainingMethod;
use crate::temperature::TemperatureSchedule;

pub const METHOD_NAMES: &[&str] = &["natural", "sat", "trades", "rslad", "absld"];

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
        other => {
            return Err(format!(
                "unknown method '{other}'; known: {}",
                METHOD_NAMES.join(", ")
            ))
        }
    })
}
