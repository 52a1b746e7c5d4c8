//! The precision a comparison asks the evaluators for, as `--precision` takes it and
//! results.json records it.

use std::fmt;

use rfb_proto::v1;
use serde::{Deserialize, Serialize};

/// Spelled `fp32`, `fp32-fast`, `bf16` on the command line, in results.json and in the reports.
/// The variants' doc comments are `--precision`'s help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// The network as it is.
    #[default]
    Fp32,
    /// An fp32 copy with batch norm folded and channels-last weights attacks; the network counts.
    #[value(name = "fp32-fast")]
    Fp32Fast,
    /// A bf16 copy attacks; the fp32 network takes every decision.
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp32Fast => "fp32-fast",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Precision> for v1::Precision {
    fn from(precision: Precision) -> v1::Precision {
        match precision {
            Precision::Fp32 => v1::Precision::Fp32,
            Precision::Fp32Fast => v1::Precision::Fp32Fast,
            Precision::Bf16 => v1::Precision::Bf16,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::Precision;

    /// The flag, the JSON and the text spell every precision the same way.
    #[test]
    fn one_spelling_everywhere() {
        for (precision, name) in [(Precision::Fp32, "fp32"), (Precision::Fp32Fast, "fp32-fast"), (Precision::Bf16, "bf16")] {
            assert_eq!(precision.to_string(), name);
            assert_eq!(serde_json::to_string(&precision).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Precision>(&format!("\"{name}\"")).unwrap(), precision);
            assert_eq!(precision.to_possible_value().unwrap().get_name(), name);
        }
    }
}
