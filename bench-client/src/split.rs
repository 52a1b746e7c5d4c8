//! Which split of a data set a comparison evaluates on, as `--split` takes it and results.json
//! records it.

use std::fmt;

use rfb_proto::v1;
use serde::{Deserialize, Serialize};

/// A data set's split; spelled `test`, `validation`, `train` on the command line, in
/// results.json and in the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Test,
    Validation,
    Train,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Validation => "validation",
            Split::Train => "train",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Split> for v1::Split {
    fn from(split: Split) -> v1::Split {
        match split {
            Split::Test => v1::Split::Test,
            Split::Validation => v1::Split::Validation,
            Split::Train => v1::Split::Train,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::Split;

    /// The flag, the JSON and the text spell every split the same way.
    #[test]
    fn one_spelling_everywhere() {
        for (split, name) in [(Split::Test, "test"), (Split::Validation, "validation"), (Split::Train, "train")] {
            assert_eq!(split.to_string(), name);
            assert_eq!(serde_json::to_string(&split).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Split>(&format!("\"{name}\"")).unwrap(), split);
            assert_eq!(split.to_possible_value().unwrap().get_name(), name);
        }
        assert!(serde_json::from_str::<Split>("\"val\"").is_err());
    }
}
