"""MT-DNN (Liu et al. 2019, "Multi-Task Deep Neural Networks for Natural Language
Understanding"): a pretrained encoder shared by GLUE's tasks with one head per task, trained
on the tasks' mixture, then (optionally) fine-tuned on each task alone from the MTL model.

Variants (`--config experiments/configs/mtdnn.py:VARIANT`):
  (none)   GLUE (docs/datasets.md says how to get it), all-MiniLM-L6-v2 when the optional
           extra is installed (requirements-minilm.txt), else pass
           --config.model.pretrained=FOLDER (any BERT-family folder, docs/pretrained.md).
  builtin  the same recipe on the built-in suite (offline).
  smoke    seconds: three GLUE tasks and the tiny BERT of tests/data (tests feed TFDS mock
           data).

Differences from the paper: a batch mixes rows of several tasks (MT-DNN draws each mini-batch
from one task, with the task picked in proportion to its size, which 'proportional' sampling
matches in expectation); the encoder is MiniLM rather than BERT-large.
"""

import os

import ml_collections
from ml_collections import config_dict

from experiments.configs import default, glue
from mtl_jax.models import pretrained

TINY_BERT = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'data', 'tiny_bert')


def _minilm_or_required():
  """MiniLM's folder when the extra is installed; else a field the command line must set
  (config validation names it)."""
  try:
    return pretrained.minilm_folder()
  except ImportError:
    return config_dict.placeholder(str)


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant == 'builtin':
    c = default.get_config()
    c.mode = 'both'  # single-task baselines too, for Δm%
  else:
    c = glue.get_config()
  c.model.pretrained = _minilm_or_required()
  c.sampling.strategy = 'proportional'  # or 'temperature' (--config.sampling.temperature)
  c.optimizer.learning_rate = 5e-5  # the paper's
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.finetune.num_steps = 1000  # per task; 0 skips the second stage
  c.finetune.learning_rate = 2e-5
  c.finetune.warmup_steps = 100
  if variant == 'smoke':
    c.tasks = ('glue_cola', 'glue_mnli', 'glue_stsb')
    c.model.pretrained = os.path.normpath(TINY_BERT)
    c.data.seq_len = 16  # the tiny BERT's positions
    c.batch_size, c.eval_batch_size = 8, 16
    c.num_steps, c.log_every = 4, 2
    c.optimizer.warmup_steps = c.finetune.warmup_steps = 0
    c.optimizer.learning_rate = c.finetune.learning_rate = 1e-3
    c.finetune.num_steps = 2
    c.mesh.devices = 1  # a model this small gains nothing from more: each adds a partition
  elif variant not in ('', 'builtin'):
    raise ValueError(f'Unknown variant {variant!r} of mtdnn.py; known: builtin, smoke.')
  return c
