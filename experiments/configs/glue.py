"""MTL over the GLUE tasks read from TFDS (docs/datasets.md), temperature sampling.

Needs GLUE prepared in config.data.data_dir (docs/datasets.md says how), or
config.data.local pointing at GLUE's TSV files. AX (glue_ax) is left out: it has only an
unlabelled test split. With a pretrained encoder, set config.data.vocabulary to its folder
so the tokenizer is the encoder's own.
"""

import ml_collections

from experiments.configs import default

GLUE_TASKS = ('glue_cola', 'glue_sst2', 'glue_mrpc', 'glue_qqp', 'glue_stsb', 'glue_mnli',
              'glue_qnli', 'glue_rte', 'glue_wnli')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant:
    raise ValueError(f'Unknown variant {variant!r} of glue.py; it has none.')
  c = default.get_config()
  c.mode = 'multi'
  c.tasks = GLUE_TASKS
  c.sampling.strategy = 'temperature'
  c.sampling.temperature = 2.0
  c.data.seq_len = 128
  c.data.vocab_size = 8000  # learnt from GLUE's training text when no vocabulary is given
  c.model.max_len = 128
  c.num_steps = 10000
  return c
