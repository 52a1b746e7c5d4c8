//! Training settings per data set: the paper's (section 5.1, A.3) for CIFAR-10, CIFAR-100 and
//! Tiny-ImageNet, and a small one for the embedded digits that trains in minutes on a CPU.

use rfb_core::data::DatasetKind;
use serde::{Deserialize, Serialize};

use crate::method::TrainingAttack;
use crate::temperature::TemperatureSchedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub architecture: String,
    pub teacher_architecture: String,
    pub epochs: i64,
    pub batch_size: i64,
    pub learning_rate: f64,
    /// Epochs (0-based, counted from the start) at whose start the learning rate is divided by 10.
    pub lr_milestones: Vec<i64>,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Random-crop padding of the augmentation; 0 turns crop and flip off.
    pub crop_padding: i64,
    pub attack: TrainingAttack,
    pub temperature: TemperatureSchedule,
    pub trades_beta: f64,
    pub alpha: f64,
    /// Evaluate (clean + PGD per class) every this many epochs, and at the last epoch.
    pub eval_every: i64,
    /// Keep a periodic checkpoint every this many epochs (0: none).
    pub checkpoint_every: i64,
    /// Steps of the PGD used for checkpoint selection.
    pub selection_pgd_steps: i64,
}

impl Preset {
    pub fn for_dataset(kind: DatasetKind) -> Preset {
        let cifar_attack = TrainingAttack {
            eps: 8.0 / 255.0,
            step_size: 2.0 / 255.0,
            steps: 10,
        };
        let paper = |architecture: &str, temperature_min: f64, temperature_max: f64| Preset {
            architecture: architecture.into(),
            teacher_architecture: "wrn-34-10".into(),
            epochs: 300,
            batch_size: 128,
            learning_rate: 0.1,
            lr_milestones: vec![215, 260, 285],
            momentum: 0.9,
            weight_decay: 2e-4,
            crop_padding: 4,
            attack: cifar_attack,
            temperature: TemperatureSchedule {
                beta: 0.1,
                min: temperature_min,
                max: temperature_max,
            },
            trades_beta: 6.0,
            alpha: 5.0 / 6.0,
            eval_every: 5,
            checkpoint_every: 50,
            selection_pgd_steps: 20,
        };
        match kind {
            DatasetKind::Cifar10 => paper("resnet18", 0.5, 5.0),
            DatasetKind::Cifar100 => paper("resnet18", 0.8, 3.0),
            DatasetKind::TinyImageNet => Preset {
                crop_padding: 8,
                ..paper("preact-resnet18", 0.9, 1.1)
            },
            DatasetKind::Digits => Preset {
                architecture: "digits-cnn".into(),
                teacher_architecture: "digits-cnn-wide".into(),
                // Batches of 128: these tiny networks are bound by per-operation overhead on a
                // CPU, so fewer, larger batches train several times faster per epoch.
                epochs: 20,
                batch_size: 128,
                learning_rate: 0.1,
                lr_milestones: vec![15, 18],
                momentum: 0.9,
                weight_decay: 5e-4,
                crop_padding: 0,
                // 8x8 digits with 17 grey levels: eps 0.1 (about 1.6 grey levels) leaves
                // robust accuracies in a useful range; see results/digits/README.md.
                attack: TrainingAttack {
                    eps: 0.1,
                    step_size: 0.025,
                    steps: 10,
                },
                temperature: TemperatureSchedule {
                    beta: 0.1,
                    min: 0.5,
                    max: 5.0,
                },
                trades_beta: 6.0,
                alpha: 5.0 / 6.0,
                eval_every: 5,
                checkpoint_every: 0,
                selection_pgd_steps: 20,
            },
        }
    }

    /// Learning rate during `epoch` (0-based).
    pub fn learning_rate_at(&self, epoch: i64) -> f64 {
        let drops = self.lr_milestones.iter().filter(|&&m| epoch >= m).count() as i32;
        self.learning_rate * 0.1f64.powi(drops)
    }

    /// Whether the learning rate drops between `epoch` and `epoch + 1`.
    pub fn lr_drops_after(&self, epoch: i64) -> bool {
        self.lr_milestones.contains(&(epoch + 1))
    }
}
