//! How many times a training step reads a tensor's value on the host (each read stalls a GPU),
//! counted by `rfb_core::host_read`: no method's step reads anything (the inner maximisation,
//! the losses and the class-wise bookkeeping stay on the device), and the training loop reads
//! one number per step, the loss, to stop before the optimiser applies a non-finite one.
//! docs/attacks.md has the table.

use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::host_read;
use rfb_core::models::{self, ModelSpec};
use rfb_trainer::method::StepContext;
use rfb_trainer::methods::Method;
use rfb_trainer::presets::Preset;
use rfb_trainer::run::{self, RunConfig};
use tch::Device;

#[test]
fn no_method_step_reads_the_host() {
    let mut preset = Preset::for_dataset(DatasetKind::Digits);
    preset.attack.steps = 3;
    let train = data::load(DatasetKind::Digits, Split::Train, None).unwrap();
    let (images, labels) = (train.images.narrow(0, 0, 32), train.labels.narrow(0, 0, 32));
    let spec = ModelSpec::new("digits-cnn", 10, [1, 8, 8]);
    let student = models::build(&spec, Device::Cpu).unwrap();
    let teacher = models::build(&spec, Device::Cpu).unwrap();
    for name in Method::ALL {
        let mut method = name.build(10, &preset.methods);
        let context = StepContext { student: &student, teacher: Some(&teacher), attack: preset.attack };
        let before = host_read::snapshot();
        for _ in 0..2 {
            let output = method.step(&context, &images, &labels);
            assert_eq!(output.loss.numel(), 1, "{name}");
        }
        assert_eq!(host_read::snapshot().since(&before).by_reason, Default::default(), "{name}: reads in a step");
    }
}

#[test]
fn the_training_loop_reads_the_loss_once_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut preset = Preset::for_dataset(DatasetKind::Digits);
    preset.epochs = 1;
    preset.lr_milestones = vec![0];
    preset.attack.steps = 2;
    let config = RunConfig {
        method: Method::Sat,
        dataset: DatasetKind::Digits,
        data_dir: None,
        teacher: None,
        init: None,
        seed: 3,
        out: dir.path().to_path_buf(),
        preset,
        select_on: Split::Validation,
        device: Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
        stop_after_batches: Some(4),
    };
    let before = host_read::snapshot();
    let stopped = run::run(&config);
    assert!(stopped.is_err(), "the run stops on request after four batches");
    let reads = host_read::snapshot().since(&before).by_reason;
    assert_eq!(reads, [("training step: loss (non-finite check and log)", 4)].into_iter().collect());
}
