//! SGD with momentum and weight decay, written out (rather than libtorch's optimiser) so that
//! its momentum buffers can be saved and restored exactly for `--resume`. Same update as
//! PyTorch's `torch.optim.SGD` (dampening 0, no Nesterov):
//! d = g + wd * p; buf = d on the first step, else momentum * buf + d; p -= lr * buf.

use std::collections::HashMap;

use rfb_core::models::Network;
use tch::Tensor;

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Trainable variables, sorted by name.
    variables: Vec<(String, Tensor)>,
    buffers: HashMap<String, Tensor>,
}

impl Sgd {
    pub fn new(network: &Network, momentum: f64, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = network
            .var_store
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd {
            momentum,
            weight_decay,
            variables,
            buffers: HashMap::new(),
        }
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
                    Some(buffer) => buffer * self.momentum + direction,
                    None => direction,
                };
                let _ = variable.f_sub_(&(&buffer * lr));
                self.buffers.insert(name.clone(), buffer);
            }
        });
    }

    /// Momentum buffers, for saving.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
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
