"""Build tests/fixtures/famo_reference.npz: FAMO (Liu et al., NeurIPS 2023) on fixed losses
and per-task gradients, from a NumPy transcription of the reference update.

    python scripts/make_famo_fixture.py            # NumPy only (the project venv works)
    /tmp/torch-venv/bin/python scripts/make_famo_fixture.py --check_torch

The reference (Cranial-XIX/FAMO, famo.py; LibMTL's FAMO is the same code) keeps task
logits w (init 0) and an Adam optimizer on them (lr w_lr, weight_decay gamma):

* get_weighted_loss(L): z = softmax(w), D = L - L_min + 1e-8, c = sum(z / D) (detached),
  loss = sum(log(D) * z / c). Its gradient is sum_i z_i / (c D_i) grad L_i: the task
  weights a = z / (c D) that combine the task gradients (row i of G_t).
* update(L_after): delta = log(D(L_before)) - log(D(L_after)); the logits' gradient is
  the vector-Jacobian product of softmax at w with delta; one torch.optim.Adam step
  (L2 weight decay: grad + gamma * w; bias-corrected moments; eps 1e-8).

mtl_jax.grad.famo takes L_after of step t to be the losses of step t+1 (the reference
measures them after the step, on step t's batch). The fixture therefore calls
update(L[t + 1]) after step t: the sequence the transform must reproduce.

With --check_torch the same sequence is also run through torch (softmax's VJP by
torch.autograd.grad, the weights by differentiating the reference loss with respect to
the losses, torch.optim.Adam), and the script fails unless both agree to 1e-6.

Stored: losses [N, T], grads [N, T, D], w_lr, gamma, and per step the reference's
logits before the step [N, T], weights [N, T] and combined update [N, D] (float64).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

EPS = 1e-8
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "famo_reference.npz")


class NumpyFAMO:
  """The reference's FAMO class, transcribed to NumPy (float64)."""

  def __init__(self, n_tasks, w_lr=0.025, gamma=1e-3, min_losses=0.0, b1=0.9, b2=0.999):
    self.w = np.zeros(n_tasks)
    self.m, self.v, self.t = np.zeros(n_tasks), np.zeros(n_tasks), 0
    self.lr, self.gamma, self.min_losses, self.b1, self.b2 = w_lr, gamma, min_losses, b1, b2

  def weights(self, losses):
    self.prev_loss = losses
    z = np.exp(self.w - self.w.max())
    z /= z.sum()
    d = losses - self.min_losses + EPS
    c = (z / d).sum()
    return z / (c * d)  # d/dL_i of sum(log(D) z / c), c held constant.

  def update(self, curr_loss):
    delta = np.log(self.prev_loss - self.min_losses + EPS) - np.log(
      curr_loss - self.min_losses + EPS
    )
    z = np.exp(self.w - self.w.max())
    z /= z.sum()
    grad = (np.diag(z) - np.outer(z, z)) @ delta  # Softmax's Jacobian (symmetric) times delta.
    grad = grad + self.gamma * self.w  # torch.optim.Adam's weight_decay.
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad**2
    denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + EPS
    self.w = self.w - self.lr / (1 - self.b1**self.t) * self.m / denom


def run_numpy(losses, grads, w_lr, gamma):
  famo = NumpyFAMO(losses.shape[1], w_lr, gamma)
  logits, weights, combined = [], [], []
  for t in range(len(losses)):
    logits.append(famo.w.copy())
    a = famo.weights(losses[t])
    weights.append(a)
    combined.append(a @ grads[t])
    if t + 1 < len(losses):
      famo.update(losses[t + 1])
  return np.array(logits), np.array(weights), np.array(combined)


def run_torch(losses, grads, w_lr, gamma):
  """The reference's own code path (autograd and torch.optim.Adam), in float64."""
  import torch
  import torch.nn.functional as F

  n = losses.shape[1]
  w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
  opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
  min_losses = torch.zeros(n, dtype=torch.float64)
  logits, weights, combined = [], [], []
  for t in range(len(losses)):
    logits.append(w.detach().numpy().copy())
    loss_t = torch.tensor(losses[t], requires_grad=True)
    z = F.softmax(w, -1)
    d = loss_t - min_losses + 1e-8
    c = (z / d).sum().detach()
    objective = (d.log() * z / c).sum()
    (a,) = torch.autograd.grad(objective, loss_t)
    a = a.numpy()
    weights.append(a)
    combined.append(a @ grads[t])
    if t + 1 < len(losses):
      prev, curr = torch.tensor(losses[t]), torch.tensor(losses[t + 1])
      delta = (prev - min_losses + 1e-8).log() - (curr - min_losses + 1e-8).log()
      (g,) = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)
      opt.zero_grad()
      w.grad = g
      opt.step()
  return np.array(logits), np.array(weights), np.array(combined)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--check_torch", action="store_true")
  args = parser.parse_args()
  rng = np.random.default_rng(31)
  n, t, dim = 8, 3, 7
  # Positive losses on different scales, some rising, rounded to float32 values.
  base = np.array([1.6, 0.7, 4.0])
  losses = base * np.exp(-0.1 * np.arange(n)[:, None] + 0.15 * rng.standard_normal((n, t)))
  losses = losses.astype(np.float32).astype(np.float64)
  grads = rng.standard_normal((n, t, dim)).astype(np.float32).astype(np.float64)
  w_lr, gamma = 0.025, 1e-3
  logits, weights, combined = run_numpy(losses, grads, w_lr, gamma)
  if args.check_torch:
    for name, a, b in zip(
      ("logits", "weights", "combined"),
      (logits, weights, combined),
      run_torch(losses, grads, w_lr, gamma),
    ):
      err = np.abs(a - b).max()
      print(f"torch vs numpy {name}: max abs diff {err:.2e}")
      assert err < 1e-6, name
  np.savez(
    OUT,
    losses=losses,
    grads=grads,
    w_lr=w_lr,
    gamma=gamma,
    logits=logits,
    weights=weights,
    combined=combined,
  )
  print(f"wrote {os.path.normpath(OUT)}; final logits {logits[-1]}")


if __name__ == "__main__":
  main()
