//! SGD with momentum and weight decay, written out (rather than libtorch's optimiser) so that
//! its momentum buffers can be saved and restored exactly for `--resume`. Same update as
//! PyTorch's `torch.optim.SGD` (dampening 0):
//! d = g + wd * p; buf = d on the first step, else momentum * buf + d; p -= lr * buf, or with
//! Nesterov momentum (Fair-ARD's code) p -= lr * (d + momentum * buf).

use std::collections::HashMap;

use rfb_core::models::Network;
use tch::Tensor;

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Trainable variables, sorted by name.
    variables: Vec<(String, Tensor)>,
    buffers: HashMap<String, Tensor>,
}

impl Sgd {
    pub fn new(network: &Network, momentum: f64, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = network.var_store.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd { momentum, weight_decay, nesterov: false, variables, buffers: HashMap::new() }
    }

    /// Switches Nesterov momentum on or off.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Back-propagates `loss` and applies one update with learning rate `lr`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) {
        for (_, variable) in &mut self.variables {
            variable.zero_grad();
        }
        loss.backward();
        tch::no_grad(|| {
            for (name, variable) in &mut self.variables {
                let gradient = variable.grad();
                if !gradient.defined() {
                    continue;
                }
                let direction = &gradient + &*variable * self.weight_decay;
                let buffer = match self.buffers.remove(name) {
                    Some(buffer) => buffer * self.momentum + &direction,
                    None => direction.shallow_clone(),
                };
                let update = if self.nesterov { direction + &buffer * self.momentum } else { buffer.shallow_clone() };
                let _ = variable.f_sub_(&(update * lr));
                self.buffers.insert(name.clone(), buffer);
            }
        });
    }

    /// Momentum buffers, for saving.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn restore(&mut self, buffers: HashMap<String, Tensor>) -> Result<(), String> {
        let device = self.variables.first().map(|(_, t)| t.device());
        for (name, buffer) in buffers {
            let Some((_, variable)) = self.variables.iter().find(|(n, _)| *n == name) else {
                return Err(format!("momentum for unknown parameter {name}"));
            };
            if variable.size() != buffer.size() {
                return Err(format!("momentum for {name} has the wrong shape"));
            }
            let buffer = match device {
                Some(device) => buffer.to_device(device),
                None => buffer,
            };
            self.buffers.insert(name, buffer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfb_core::models::{self, ModelSpec};
    use tch::{Device, Kind};

    /// Two steps on the loss sum(w * c) (gradient c) from w0, by hand:
    /// plain: b1 = d1, w1 = w0 - lr b1; b2 = m b1 + d2, w2 = w1 - lr b2;
    /// Nesterov: the same buffers, steps lr (d + m b).
    #[test]
    fn updates_match_pytorch_sgd_with_and_without_nesterov() {
        let (lr, momentum, decay) = (0.1, 0.9, 0.01);
        for nesterov in [false, true] {
            let network = models::build(&ModelSpec::new("digits-cnn", 10, [1, 8, 8]), Device::Cpu).unwrap();
            let mut optimizer = Sgd::new(&network, momentum, decay).with_nesterov(nesterov);
            let weight = network.var_store.variables()["linear.bias"].shallow_clone();
            let start = Vec::<f64>::try_from(weight.to_kind(Kind::Double)).unwrap();
            let c: Vec<f64> = (0..10).map(|k| k as f64 * 0.1 - 0.3).collect();
            let coefficients = Tensor::from_slice(&c).to_kind(Kind::Float);
            let mut expected = start.clone();
            let mut buffer = [0.0; 10];
            for step in 0..2 {
                optimizer.step(&(&weight * &coefficients).sum(Kind::Float), lr);
                for k in 0..10 {
                    let d = c[k] + decay * expected[k];
                    buffer[k] = if step == 0 { d } else { momentum * buffer[k] + d };
                    let update = if nesterov { d + momentum * buffer[k] } else { buffer[k] };
                    expected[k] -= lr * update;
                }
            }
            let found = Vec::<f64>::try_from(weight.to_kind(Kind::Double)).unwrap();
            for (f, e) in found.iter().zip(&expected) {
                assert!((f - e).abs() < 1e-6, "nesterov {nesterov}: {found:?} vs {expected:?}");
            }
        }
    }
}
