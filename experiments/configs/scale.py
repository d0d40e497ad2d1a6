"""Large encoders for the scaling evidence (experiments/fsdp_memory.py, docs/scaling.md).

Variants (`--config experiments/configs/scale.py:VARIANT`):
  bert_base   12 layers, 768 wide, 12 heads, FFN 3072: about 110M parameters (the MFU run).
  bert_large  (default) 24 layers, 1024 wide, 16 heads, FFN 4096: about 335M parameters.
  1b          20 layers, 2048 wide, 16 heads, FFN 8192: about 1.07B parameters.
Both: BERT's 30522-token vocabulary and 512 positions, seq 128, global batch 64, the
sentence tasks of the built-in suite, no dropout. The mesh is FSDP over 8 devices; set
config.mesh for your slice (docs/scaling.md).
"""

from experiments.configs import default

SIZES = {  # layers, width, heads, FFN
    'bert_base': (12, 768, 12, 3072),
    'bert_large': (24, 1024, 16, 4096),
    '1b': (20, 2048, 16, 8192),
}


def get_config(variant: str = 'bert_large'):
  if variant not in SIZES:
    raise ValueError(f'Unknown variant {variant!r} of scale.py; known: {sorted(SIZES)}.')
  c = default.get_config()
  c.mode = 'multi'
  c.tasks = ('sentiment', 'topic', 'conflict', 'entailment')
  c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.intermediate_size = (
      SIZES[variant])
  c.model.vocab_size = 30522
  c.model.max_len = 512
  c.model.dropout_rate = c.model.attention_dropout_rate = c.model.head_dropout_rate = 0.0
  c.data.seq_len = 128
  c.batch_size = 64
  c.optimizer.learning_rate = 1e-4
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
  return c
