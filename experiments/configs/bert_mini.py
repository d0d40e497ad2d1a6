"""bert-mini: the benchmark shape shared with the PyTorch peer (../shared/peer/).

4 layers, 256 wide, 4 heads, FFN 1024, seq 128, batch 32, a 30522-token vocabulary, four
classification tasks on the [CLS] state (no pooler), AdamW, no dropout.
`python -m mtl_jax.bench --config experiments/configs/bert_mini.py` times its train step.
"""

from experiments.configs import default


def get_config(variant: str = ''):
  c = default.get_config(variant)
  c.mode = 'multi'
  c.tasks = ('sentiment', 'topic', 'conflict', 'entailment')
  c.model.vocab_size = 30522
  c.model.hidden_size = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.intermediate_size = 1024
  c.model.max_len = 128
  c.model.pooler = False
  c.model.pooling = 'cls'  # as the PyTorch peer (../shared/peer) reads it
  c.model.dropout_rate = 0.0
  c.model.attention_dropout_rate = 0.0
  c.model.head_dropout_rate = 0.0
  c.data.seq_len = 128
  c.optimizer.learning_rate = 1e-4
  c.batch_size = 32
  return c
