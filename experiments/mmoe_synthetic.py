"""The synthetic experiment of MMoE (Ma et al. 2018, KDD, section 4): two regression tasks
whose relatedness is set by a correlation score p; shared-bottom, OMoE and MMoE trained on
each; does MMoE's advantage over shared-bottom grow as p falls?

Data (section 4.2): orthogonal unit vectors u1, u2 in R^d; w1 = c·u1,
w2 = c·(p·u1 + sqrt(1 - p²)·u2); x ~ N(0, I_d);
y_k = w_kᵀx + Σ_{i=1..m} sin(α_i w_kᵀx + β_i) + ε_k, ε_k ~ N(0, 0.01).
The paper leaves α_i, β_i as given parameters without values (as a Google Research
reimplementation of this generator notes; it picks α_i = i, β_i = (i-1)²). We draw them from
N(0, 1) once per seed, shared by both tasks and all p, so within a seed only p changes.
N(0, 0.01) is read as variance 0.01 (--noise_std 0.1).

Models (section 5; sizes as in the paper and public reproductions): MMoE and OMoE have 8 single-layer ReLU experts of
16 units; shared-bottom one ReLU layer of 113 units (about the same parameter count); every
task has a tower Dense(8)-ReLU-Dense(1). All three are mtl_jax.models.moe.MMoE: shared-bottom
is the one-expert case (a softmax over one expert is 1), OMoE the shared-gate case.

The defaults ran in about 5 minutes on a busy 2-core CPU (most of it compilation); the
flags scale it up, e.g. (the seeds run vmapped, each holding its own data set)
  python experiments/mmoe_synthetic.py --seeds 20 --steps 20000 --batch_size 256
It prints the labels' Pearson correlation per p, then the held-out MSE (mean over the two
tasks; mean ± std over seeds) per model and p, and MMoE's paired advantage over
shared-bottom.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax.models.moe import MMoE, Expert, stacked

NUM_TASKS = 2
MODELS = {  # name -> (experts, expert width, one gate for all tasks)
    'shared-bottom': (1, 113, False),
    'OMoE': (8, 16, True),
    'MMoE': (8, 16, False),
}


def task_weights(key, dim: int, p, scale: float) -> jax.Array:
  """(2, d): w1 = c·u1 and w2 = c·(p·u1 + sqrt(1-p²)·u2), u1 ⟂ u2 unit vectors."""
  q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, 2)))
  u1, u2 = q.T
  return scale * jnp.stack([u1, p * u1 + jnp.sqrt(1.0 - p ** 2) * u2])


def labels(x, weights, alphas, betas, noise):
  """y_k = w_kᵀx + Σ_i sin(α_i w_kᵀx + β_i) + ε_k: x (n, d), weights (2, d) -> (2, n)."""
  linear = weights @ x.T
  waves = jnp.sin(alphas[:, None, None] * linear + betas[:, None, None]).sum(0)
  return linear + waves + noise


def dataset(key, p, size: int, dim: int, sin_terms: int, scale: float, noise_std: float):
  """x (size, d) and y (2, size) of one seed at correlation score p."""
  k_w, k_alpha, k_beta, k_x, k_noise = jax.random.split(key, 5)
  x = jax.random.normal(k_x, (size, dim))
  noise = noise_std * jax.random.normal(k_noise, (NUM_TASKS, size))
  return x, labels(x, task_weights(k_w, dim, p, scale),
                   jax.random.normal(k_alpha, (sin_terms,)),
                   jax.random.normal(k_beta, (sin_terms,)), noise)


class Tower(nn.Module):
  """A task's tower h^k: one ReLU layer, then the regression output."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, name='out')(Expert(self.hidden, name='hidden')(x))[..., 0]


class Synthetic(nn.Module):
  """y_k = h^k(f^k(x)) (Ma et al. 2018, eq. 6): x (B, d) -> (2, B)."""
  num_experts: int
  expert_hidden: int
  shared_gate: bool
  tower_hidden: int = 8

  @nn.compact
  def __call__(self, x):
    mixtures = MMoE(NUM_TASKS, self.num_experts, self.expert_hidden, self.shared_gate,
                    name='moe')(x)
    return stacked(Tower, NUM_TASKS, 0)(self.tower_hidden, name='towers')(mixtures)


def mse(model, params, x, y):
  """Per-task mean squared error, (2,)."""
  return jnp.square(model.apply({'params': params}, x) - y).mean(-1)


def make_run(model, args):
  """(key, p) -> (training loss per step (steps,), held-out MSE per task (2,))."""
  optimizer = optax.adam(args.learning_rate)

  def run(key, p):
    data_key, init_key, batch_key = jax.random.split(key, 3)
    x, y = dataset(data_key, p, args.train_size + args.test_size, args.dim, args.sin_terms,
                   args.scale, args.noise_std)
    x_train, y_train = x[:args.train_size], y[:, :args.train_size]
    params = model.init(init_key, x_train[:1])['params']

    def step(carry, key):
      params, opt_state = carry
      rows = jax.random.randint(key, (args.batch_size,), 0, args.train_size)
      loss, grads = jax.value_and_grad(lambda q: mse(model, q, x_train[rows],
                                                     y_train[:, rows]).sum())(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), curve = jax.lax.scan(step, (params, optimizer.init(params)),
                                      jax.random.split(batch_key, args.steps))
    return curve, mse(model, params, x[args.train_size:], y[:, args.train_size:])

  return jax.jit(jax.vmap(run, in_axes=(0, None)))


def label_correlation(args, p) -> float:
  """Pearson correlation of y1 and y2, mean over the seeds (the paper's figure 2)."""
  def one(key):
    _, y = dataset(key, p, args.test_size, args.dim, args.sin_terms, args.scale,
                   args.noise_std)
    return jnp.corrcoef(y)[0, 1]
  return float(jax.vmap(one)(seed_keys(args)).mean())


def seed_keys(args):
  return jax.random.split(jax.random.key(args.seed), args.seeds)


def parameter_count(model, dim: int) -> int:
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, dim)))
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--correlations', default='1.0,0.9,0.5,0.0')
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dim', type=int, default=100)
  parser.add_argument('--sin_terms', type=int, default=10, help='m')
  parser.add_argument('--scale', type=float, default=1.0, help='c')
  parser.add_argument('--noise_std', type=float, default=0.1)
  parser.add_argument('--train_size', type=int, default=100000)
  parser.add_argument('--test_size', type=int, default=5000)
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--learning_rate', type=float, default=1e-3)
  args = parser.parse_args()
  correlations = [float(c) for c in args.correlations.split(',')]
  start = time.time()

  print('label Pearson correlation per p: ' + ', '.join(
      f'p={p}: {label_correlation(args, p):.3f}' for p in correlations))
  tail = max(1, args.steps // 10)
  results = {}
  for name, (experts, width, shared_gate) in MODELS.items():
    model = Synthetic(experts, width, shared_gate)
    run = make_run(model, args)
    print(f'{name}: {parameter_count(model, args.dim)} parameters')
    for p in correlations:
      curve, test = run(seed_keys(args), p)
      results[name, p] = (np.asarray(test).mean(-1), np.asarray(curve[:, -tail:]).mean(-1))

  print(f'\nheld-out MSE (mean of 2 tasks), mean ± std over {args.seeds} seeds; '
        f'in brackets the training loss (sum of 2 tasks) over the last {tail} steps')
  print(f'{"p":>5} ' + ''.join(f'{name:>28}' for name in MODELS))
  for p in correlations:
    cells = ''.join(f'{results[n, p][0].mean():>10.4f} ± {results[n, p][0].std():.4f} '
                    f'[{results[n, p][1].mean():.4f}]' for n in MODELS)
    print(f'{p:>5} {cells}')
  print('\nMMoE advantage over shared-bottom (held-out MSE, paired by seed; > 0: MMoE better)')
  for p in correlations:
    gap = results['shared-bottom', p][0] - results['MMoE', p][0]
    print(f'p={p:>4}: {gap.mean():+.4f} ± {gap.std():.4f}')
  print(f'\ntotal time {time.time() - start:.0f} s')


if __name__ == '__main__':
  main()
