//! Adversarial confusions: the points of each true class counted by the class the judge
//! predicts after the attack. Row `k` adds up to class `k`'s points and the diagonal is the
//! per-class robust count ([`ClassCounts`]), so a confusion says where the broken points went.

use tch::{Kind, Tensor};

use super::{AttackError, ClassCounts};

/// `rows[true_class][predicted_class]`: points of each class by the class predicted after the
/// attack (for an ensemble, by the output of the component that broke the point; a point that
/// survived is predicted as its own class).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Confusion {
    rows: Vec<Vec<i64>>,
}

impl Confusion {
    /// All zeros, `classes x classes`.
    pub fn new(classes: usize) -> Self {
        Confusion { rows: vec![vec![0; classes]; classes] }
    }

    /// Counts `predicted` (i64 [N]) against `labels` (i64 [N]), both on any device: one read of
    /// each to the host. A predicted class outside `0..classes` is an error (a model with more
    /// outputs than the data set has classes), never counted in another cell.
    pub fn from_predictions(classes: usize, labels: &Tensor, predicted: &Tensor) -> Result<Self, AttackError> {
        if labels.size() != predicted.size() || labels.dim() != 1 {
            return Err(AttackError::InvalidParameter(format!(
                "labels of shape {:?} but predictions of shape {:?}",
                labels.size(),
                predicted.size()
            )));
        }
        // One read of both, at the end of an evaluation.
        let both = Tensor::f_stack(&[labels.f_to_kind(Kind::Int64)?, predicted.f_to_device(labels.device())?.f_to_kind(Kind::Int64)?], 0)?;
        let values = crate::host_read::vec_i64(&both, "evaluation: labels and predictions for the confusion");
        let n = labels.size()[0] as usize;
        if values.len() != 2 * n {
            return Err(AttackError::InvalidParameter("the predictions could not be read back".into()));
        }
        let (labels, predicted) = values.split_at(n);
        let mut confusion = Confusion::new(classes);
        for (&label, &class) in labels.iter().zip(predicted) {
            let row = usize::try_from(label).ok().filter(|&k| k < classes);
            let column = usize::try_from(class).ok().filter(|&k| k < classes);
            match (row, column) {
                (Some(row), Some(column)) => confusion.rows[row][column] += 1,
                (None, _) => return Err(AttackError::ClassOutOfRange { what: "true class", class: label, classes }),
                (_, None) => return Err(AttackError::ClassOutOfRange { what: "predicted class", class, classes }),
            }
        }
        Ok(confusion)
    }

    /// Wraps counts read back from a store; `None` unless they are `classes x classes` and
    /// non-negative.
    pub fn from_rows(rows: Vec<Vec<i64>>) -> Option<Self> {
        let classes = rows.len();
        (rows.iter().all(|row| row.len() == classes && row.iter().all(|&c| c >= 0))).then_some(Confusion { rows })
    }

    pub fn classes(&self) -> usize {
        self.rows.len()
    }

    pub fn rows(&self) -> &[Vec<i64>] {
        &self.rows
    }

    pub fn into_rows(self) -> Vec<Vec<i64>> {
        self.rows
    }

    /// Adds `other` cell by cell (a later batch, another shard).
    pub fn add(&mut self, other: &Confusion) -> Result<(), AttackError> {
        if other.classes() != self.classes() {
            return Err(AttackError::InvalidParameter(format!(
                "adding a {0}x{0} confusion to a {1}x{1} one",
                other.classes(),
                self.classes()
            )));
        }
        for (mine, theirs) in self.rows.iter_mut().zip(&other.rows) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        Ok(())
    }

    /// The per-class counts it implies: the diagonal is what survived, a row's sum the class's points.
    pub fn class_counts(&self) -> ClassCounts {
        ClassCounts {
            correct: self.rows.iter().enumerate().map(|(k, row)| row[k]).collect(),
            total: self.rows.iter().map(|row| row.iter().sum()).collect(),
        }
    }
}
