//! BAT (Sun, Xu, Yao, Liang, Wu, Liang, Liu and Liu, "Improving Robust Fairness via Balance
//! Adversarial Training", AAAI 2023).
//!
//! Two balance terms on top of TRADES. Source-class fairness: rather than pushing every point
//! as far as the attack can, the training points are taken where each example meets the
//! decision boundary, the last iterate still classified correctly ("last clean", x_lc) and the
//! iterate after the one that first crosses ("first adversarial", x_fa: FAT-style early
//! stopping with tau = 1, the second misclassified iterate). Target-class fairness: both are
//! pulled towards the uniform prediction, so that no wrong class is favoured as a target:
//!   CE(f(x_lc), y) + beta * KL(f(x) || f(x_fa)) + KL(f(x_lc) || U) + KL(f(x_fa) || U),
//! with KL(p || U) = sum_j p_j log p_j + log C, each term a batch mean.
//!
//! Defaults, from the public code released for the paper
//! (silvercherry/Improving-Robust-Fairness-via-Balance-Adversarial-Training, `train.py`):
//! beta = 6, the TRADES KL-PGD of 10 steps from x + 0.001 N(0, 1), weight 1 on the uniform
//! terms, and the KL terms summed over classes and averaged over the batch (`KLDivLoss(size_average
//! =False)` divided by the batch size; no 1/C factor). Its schedule (200 epochs, drops at 75, 90
//! and 100, weight decay 2e-4, inherited from TRADES' script) is in the recipes. Our choice: both points come from one trajectory of that attack (the code runs the
//! attack twice with independent starts); an example never misclassified uses the final
//! iterate for both, one misclassified from the start uses the start as x_lc.

use rfb_core::attacks::losses;

use super::trades::{trades_adversarial, uniform_per_example};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput, TrainingMethod};

/// BAT's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatSettings {
    /// Weight of the TRADES term.
    pub beta: f64,
}

pub struct Bat {
    pub beta: f64,
}

impl Bat {
    pub fn new(settings: BatSettings) -> Self {
        Bat { beta: settings.beta }
    }
}

/// KL(softmax(logits) || uniform) per example: sum_j p_j log p_j + log C.
pub fn kl_to_uniform(logits: &Tensor) -> Tensor {
    let classes = logits.size()[1] as f64;
    let log_p = logits.log_softmax(-1, Kind::Float);
    (log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float) + classes.ln()
}

/// BAT's loss from the logits at x_lc, x_fa and x (module docs).
pub fn bat_loss(
    last_clean_logits: &Tensor,
    first_adversarial_logits: &Tensor,
    clean_logits: &Tensor,
    labels: &Tensor,
    beta: f64,
) -> Tensor {
    let cross_entropy = losses::cross_entropy(last_clean_logits, labels).mean(Kind::Float);
    let robust = losses::kl_to_soft_labels(first_adversarial_logits, &clean_logits.softmax(-1, Kind::Float)).mean(Kind::Float);
    let balance = (kl_to_uniform(last_clean_logits) + kl_to_uniform(first_adversarial_logits)).mean(Kind::Float);
    cross_entropy + robust * beta + balance
}

/// Picks x_lc and x_fa along one attack trajectory from the iterates it visits.
struct BoundaryPoints {
    last_clean: Tensor,
    first_adversarial: Tensor,
    ever_wrong: Tensor,
    wrong_count: Tensor,
}

impl BoundaryPoints {
    fn new(images: &Tensor) -> Self {
        let n = images.size()[0];
        let device = images.device();
        BoundaryPoints {
            last_clean: images.shallow_clone(),
            first_adversarial: images.shallow_clone(),
            ever_wrong: Tensor::zeros([n], (Kind::Bool, device)),
            wrong_count: Tensor::zeros([n], (Kind::Int64, device)),
        }
    }

    fn observe(&mut self, iterate: &Tensor, logits: &Tensor, labels: &Tensor) {
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, iterate.dim() - 1));
        let wrong = logits.argmax(-1, false).ne_tensor(labels);
        // Still on the correct side and never crossed: the latest such iterate is x_lc.
        let keep_clean = (wrong.logical_not().logical_and(&self.ever_wrong.logical_not())).reshape(&shape);
        self.last_clean = iterate.where_self(&keep_clean, &self.last_clean);
        self.ever_wrong = self.ever_wrong.logical_or(&wrong);
        // The second misclassified iterate (one step past the first crossing) is x_fa.
        let before = self.wrong_count.shallow_clone();
        self.wrong_count = &self.wrong_count + wrong.to_kind(Kind::Int64);
        let reaches_second = before.eq(1).logical_and(&self.wrong_count.eq(2)).reshape(&shape);
        self.first_adversarial = iterate.where_self(&reaches_second, &self.first_adversarial);
    }

    /// x_lc and x_fa once the trajectory ended at `last`.
    fn finish(self, last: &Tensor) -> (Tensor, Tensor) {
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, last.dim() - 1));
        let never_wrong = self.ever_wrong.logical_not().reshape(&shape);
        let stopped = self.wrong_count.ge(2).reshape(&shape);
        (last.where_self(&never_wrong, &self.last_clean), self.first_adversarial.where_self(&stopped, last))
    }
}

impl TrainingMethod for Bat {
    fn name(&self) -> &'static str {
        "bat"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let attack = context.attack;
        let mut points = BoundaryPoints::new(images);
        let last = trades_adversarial(
            context,
            images,
            &uniform_per_example(images, attack.eps),
            &uniform_per_example(images, attack.step_size),
            |_, iterate, logits| points.observe(iterate, logits, labels),
        );
        let (last_clean, first_adversarial) = points.finish(&last);
        let clean_logits = context.student.forward_t(images, true);
        let last_clean_logits = context.student.forward_t(&last_clean, true);
        let first_adversarial_logits = context.student.forward_t(&first_adversarial, true);
        let loss = bat_loss(&last_clean_logits, &first_adversarial_logits, &clean_logits, labels, self.beta);
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(first_adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"beta": self.beta, "uniform_weight": 1.0, "early_stop_tau": 1, "start": "gaussian 0.001"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_adds_the_balance_terms_worked_by_hand() {
        // Two examples of classes 0 and 1, three classes, beta = 6.
        // CE at x_lc: (0.407606 + 0.551444) / 2 = 0.479525; KL(f(x) || f(x_fa)) per example
        // (1.139572, 0.779365), times 6 on the mean = 5.756811; KL to uniform: x_lc (0.266217,
        // 0.123284), x_fa (0.123284, 0.123284), mean of the sums 0.318035. Total 6.554372.
        let logits = |v: &[f32]| Tensor::from_slice(v).view([2, 3]);
        let loss = bat_loss(
            &logits(&[2.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
            &logits(&[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
            &logits(&[3.0, 0.0, 0.0, 0.0, 2.0, 0.0]),
            &Tensor::from_slice(&[0i64, 1]),
            6.0,
        );
        assert!((f64::try_from(loss).unwrap() - 6.554372).abs() < 1e-5);
        // The uniform prediction is at zero distance from uniform.
        assert!(f64::try_from(kl_to_uniform(&Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu)))).unwrap().abs() < 1e-6);
    }

    #[test]
    fn boundary_points_are_the_last_correct_and_the_second_wrong_iterates() {
        // Four examples of class 0 whose iterates are the numbers 0, 1, 2, ... and whose
        // correctness along the trajectory is scripted (T correct, F wrong):
        //   a: T T F F T   -> x_lc = 1, x_fa = 3 (second wrong)
        //   b: F T F T T   -> x_lc = 0 (the start, wrong from the outset), x_fa = 2
        //   c: T T T T T   -> never wrong: both are the final iterate 5
        //   d: T F T T T   -> x_lc = 0, only one wrong iterate: x_fa is the final iterate 5
        let script = ["TFTT", "TTTF", "FFTT", "FTTT", "TTTT"];
        let labels = Tensor::zeros([4], (Kind::Int64, tch::Device::Cpu));
        let start = Tensor::zeros([4, 1], (Kind::Float, tch::Device::Cpu));
        let mut points = BoundaryPoints::new(&start);
        for (step, row) in script.iter().enumerate() {
            let iterate = Tensor::full([4, 1], step as f64, (Kind::Float, tch::Device::Cpu));
            // Logits favour class 0 when correct, class 1 when wrong.
            let correct: Vec<f32> = row.chars().flat_map(|c| if c == 'T' { [1.0, 0.0] } else { [0.0, 1.0] }).collect();
            points.observe(&iterate, &Tensor::from_slice(&correct).view([4, 2]), &labels);
        }
        let last = Tensor::full([4, 1], 5.0, (Kind::Float, tch::Device::Cpu));
        let (last_clean, first_adversarial) = points.finish(&last);
        let values = |t: Tensor| Vec::<f32>::try_from(t.view([-1])).unwrap();
        assert_eq!(values(last_clean), vec![1.0, 0.0, 5.0, 0.0]);
        assert_eq!(values(first_adversarial), vec![3.0, 2.0, 5.0, 5.0]);
    }
}
