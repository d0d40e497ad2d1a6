"""AdamW with warmup, decay and global-norm clipping (BERT's recipe), from optax parts."""

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == 'constant':
    decay = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == 'linear':
    decay = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay],
                              [warmup])


def _decay_mask(params):
  """No weight decay on biases, LayerNorm parameters (BERT's convention)."""
  return jax.tree.map_with_path(
      lambda path, _: path[-1].key not in ('bias', 'scale'), params)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay, mask=_decay_mask),
  )
