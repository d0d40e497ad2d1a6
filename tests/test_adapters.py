"""LoRA-family adapters (mtl_jax/models/adapters.py) on the decoder's projections: each
architecture against an independent computation (a plain decoder whose kernels are
W + (α/r)·ΔW, or numpy for the per-token router), the base model at initialisation, and
task routing in the gradient."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import peft_adapters
from mtl_jax.models import adapters
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models.decoder import Decoder, DecoderConfig

CFG = DecoderConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=12, intermediate_size=24, rms_norm_eps=1e-5, rope_theta=100.0,
                    max_position_embeddings=32, tie_word_embeddings=False,
                    initializer_range=0.3)
TASKS = 3
LENGTH = 6


def _adapter_config(architecture, targets=decoder_lib.PROJECTIONS):
  return adapters.AdapterConfig(architecture, tuple(targets), rank=4, alpha=8.0,
                                num_tasks=TASKS, num_heads=2)


TOKENS = np.random.default_rng(3).integers(0, 40, (TASKS, LENGTH))


def _inputs(task_ids, rows=None):
  """TOKENS' `rows` (default: one per task id, in order), each token of task_ids[i]."""
  tokens = jnp.asarray(TOKENS[list(range(len(task_ids))) if rows is None else rows])
  positions = jnp.broadcast_to(jnp.arange(LENGTH), tokens.shape)
  mask = decoder_lib.segment_mask(jnp.ones(tokens.shape, jnp.int32), positions)
  tasks = jnp.broadcast_to(jnp.asarray(task_ids)[:, None], tokens.shape)
  return tokens, positions, mask, tasks


def _model_and_params(cfg):
  model = Decoder(CFG, adapter=adapters.hook(cfg))
  tokens, positions, mask, tasks = _inputs(range(TASKS))
  params = nn.unbox(model.init(jax.random.key(0), tokens, positions, mask, tasks))['params']
  return model, params


def _base(params):
  """The base model's parameters: the tree without the adapters."""
  if not isinstance(params, dict):
    return params
  return {k: _base(v) for k, v in params.items() if k != 'adapter'}


def _randomised(params, seed=1):
  """Every adapter parameter drawn at random (B, the mixes and the transforms included), so
  a check cannot pass on an adapter that starts at zero."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  new = [rng.normal(0, 0.3, x.shape).astype(np.float32)
         if any(getattr(k, 'key', None) == 'adapter' for k in path) else x
         for path, x in leaves]
  return jax.tree_util.tree_unflatten(tree, new)


def _logits(model, params, task_ids, rows=None):
  tokens, positions, mask, tasks = _inputs(task_ids, rows)
  out = model.apply({'params': params}, tokens, positions, mask, tasks)
  return model.apply({'params': params}, out.hidden, method=model.logits)


@pytest.mark.parametrize('architecture', adapters.ARCHITECTURES)
def test_every_architecture_starts_as_the_base_model(architecture):
  model, params = _model_and_params(_adapter_config(architecture))
  targeted = {tuple(k.key for k in path)[-3] for path, _ in
              jax.tree_util.tree_flatten_with_path(params)[0]
              if any(getattr(k, 'key', None) == 'adapter' for k in path)}
  assert targeted == set(decoder_lib.PROJECTIONS)
  base = Decoder(CFG)
  np.testing.assert_allclose(_logits(model, params, [0, 1, 2]),
                             _logits(base, _base(params), [0, 1, 2]), rtol=0, atol=1e-6)


@pytest.mark.parametrize('architecture', adapters.MERGEABLE)
def test_a_row_of_task_t_equals_the_base_with_its_merged_weights(architecture):
  """W + (α/r)·ΔW_t in a plain decoder (no adapter code runs) against the adapted decoder,
  for each task's row: ΔW = AB (lora), A_t B_t (task_lora), both (shared_task_lora),
  A Λ_t Σ_j softmax(w_t)_j B_j (mtl_lora)."""
  cfg = _adapter_config(architecture, ('q', 'o', 'gate', 'down'))
  model, params = _model_and_params(cfg)
  params = _randomised(params)
  adapted = _logits(model, params, [0, 1, 2])
  for task in range(TASKS):
    merged = adapters.merge(params, cfg, None if architecture == 'lora' else task)
    plain = _logits(Decoder(CFG), merged, [task], rows=[task])
    np.testing.assert_allclose(adapted[task], plain[0], rtol=2e-5, atol=2e-5)
  if architecture != 'lora':  # the tasks' rows differ: each read its own adapter
    assert float(jnp.abs(adapted[0] - adapted[1]).max()) > 1e-2


def test_hydra_lora_mixes_its_b_matrices_by_a_per_token_router():
  """The adapter alone against numpy: y + (α/r) Σ_j softmax(x W_r)_j · x A B_j."""
  cfg = _adapter_config('hydra_lora')
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)  # (B, S, heads, head_dim): an 'o'
  y = rng.normal(size=(2, 5, 7)).astype(np.float32)
  module = adapters.Adapter(cfg, 'o')
  params = module.init(jax.random.key(0), x, y, None)['params']
  params = {k: rng.normal(0, 0.5, v.shape).astype(np.float32) for k, v in params.items()}
  got = module.apply({'params': params}, x, y, None)
  flat = x.reshape(10, 12)
  logits = flat @ params['router']
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  low = flat @ params['a']
  want = y.reshape(10, 7) + cfg.alpha / cfg.rank * sum(
      weights[:, j:j + 1] * (low @ params['b'][j]) for j in range(cfg.num_heads))
  np.testing.assert_allclose(got, want.reshape(y.shape), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='hydra_lora cannot be merged'):
    adapters.merge({}, cfg)


@pytest.mark.integration
@pytest.mark.parametrize('architecture', ['task_lora', 'shared_task_lora', 'mtl_lora'])
def test_a_batch_of_one_task_changes_only_what_that_task_routes_to(architecture):
  cfg = _adapter_config(architecture, ('v', 'up'))
  model, params = _model_and_params(cfg)
  params = _randomised(params)
  loss = lambda p: jnp.sum(_logits(model, p, [1, 1]) ** 2)
  grads = jax.grad(loss)(params)
  for name in ('v', 'up'):
    where = grads['layers']['attention' if name == 'v' else 'mlp'][name]
    for leaf, grad in where['adapter'].items():
      grad = np.asarray(grad)  # (layers, tasks, ...) for a per-task leaf
      if leaf.startswith('task_'):
        assert np.abs(grad[:, 1]).max() > 0, (name, leaf)
        np.testing.assert_array_equal(grad[:, [0, 2]], 0, err_msg=f'{name} {leaf}')
      else:  # shared: every task's tokens move it
        assert np.abs(grad).max() > 0, (name, leaf)
    assert np.abs(np.asarray(where['kernel'])).max() > 0  # the base's own gradient (the
    # step freezes it by taking gradients of the adapters only)


@pytest.mark.parametrize('change,message', [
    (dict(targets=('q', 'query')), r"targets: \['query'\] is not among the projections"),
    (dict(rank=0), 'rank: must be >= 1, got 0'),
    (dict(alpha=0.0), 'alpha: must be > 0, got 0.0'),
    (dict(architecture='prefix'), r"architecture: 'prefix' is not one of"),
    (dict(dropout=1.0), r'dropout: must be in \[0, 1\), got 1.0'),
])
def test_bad_settings_are_refused_naming_the_setting(change, message):
  with pytest.raises(ValueError, match=message):
    adapters.hook(_adapter_config('lora')._replace(**change))


def test_a_rank_above_a_projection_s_smaller_side_is_refused():
  cfg = _adapter_config('lora')._replace(rank=30)
  fans = {'q': (32, 48), 'k': (32, 24), 'v': (32, 24), 'o': (48, 32), 'gate': (32, 24),
          'up': (32, 24), 'down': (24, 32)}
  with pytest.raises(ValueError, match=r"rank: 30 exceeds min\(fan_in, fan_out\) = 24 of the "
                                       r"'k' projection"):
    adapters.check(cfg, fans.__getitem__)
  adapters.check(cfg._replace(rank=24), fans.__getitem__)


def test_per_task_adapters_without_task_ids_are_an_error():
  module = adapters.Adapter(_adapter_config('task_lora'), 'q')
  x, y = jnp.ones((1, 2, 4)), jnp.ones((1, 2, 3))
  with pytest.raises(ValueError, match="task_lora adapters need each token's task id"):
    module.init(jax.random.key(0), x, y, None)


@pytest.mark.parametrize('case', peft_adapters.CASES)
def test_peft_loads_the_written_lora_and_computes_the_same_logits(case, tmp_path):
  """write_peft's folder (the stored one PEFT's reference was made from: the same files) and
  PEFT's logits for it (experiments/reference/peft_reference.py) against the adapted
  decoder's, on the transformers parity inputs (right- and left-padded rows)."""
  cfg, params, adapter_cfg, task = peft_adapters.adapted(case)
  written = adapters.write_peft(str(tmp_path / case), params, adapter_cfg, task, 'tiny_llama')
  stored = os.path.join(peft_adapters.FOLDER, case)
  for name in (adapters.PEFT_CONFIG_FILE,):
    with open(os.path.join(written, name)) as a, open(os.path.join(stored, name)) as b:
      assert json.load(a) == json.load(b)
  ours, theirs = (load_file(os.path.join(f, adapters.PEFT_WEIGHTS_FILE)) for f in (written, stored))
  assert ours.keys() == theirs.keys()
  for key in ours:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

  ref = np.load(os.path.join(peft_adapters.DATA, 'tiny_llama_reference.npz'))
  mask, positions = jnp.asarray(ref['attention_mask']), jnp.asarray(ref['position_ids'])
  tasks = jnp.full(mask.shape, task or 0)
  model = Decoder(cfg, adapter=adapters.hook(adapter_cfg))
  out = model.apply({'params': params}, jnp.asarray(ref['input_ids']), positions,
                    decoder_lib.segment_mask(mask, positions), tasks)
  logits = np.asarray(model.apply({'params': params}, out.hidden, method=model.logits))
  want = np.load(os.path.join(peft_adapters.DATA, 'tiny_llama_peft_reference.npz'))[case]
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(logits[real], want[real], rtol=1e-4, atol=1e-5)
  base = Decoder(cfg).apply({'params': _base(params)}, jnp.asarray(ref['input_ids']),
                            positions, decoder_lib.segment_mask(mask, positions))
  assert np.abs(np.asarray(base.hidden) - np.asarray(out.hidden))[real].max() > 1e-2  # moved


def test_architectures_without_a_peft_form_say_so():
  for architecture in ('mtl_lora', 'hydra_lora'):
    with pytest.raises(ValueError, match=f'{architecture} has no PEFT form'):
      adapters.peft_pairs({}, _adapter_config(architecture), 0)
