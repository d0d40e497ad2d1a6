"""Batched text generation with the decoder: a compiled prefill, then a compiled one-token
step with the KV cache, looped on the host.

The host loop (not a lax.while_loop) is what lets tokens stream out as they come, stop
strings end a row (they need the decoded text), and the loop end as soon as every row has
finished; one step's dispatch costs far less than its matmuls.

Shapes are static: prompts are left-padded to a bucket length (BUCKETS), and the cache
holds bucket + max_new_tokens slots, so a chat recompiles only when its prompt outgrows a
bucket. Rotary positions come from the mask (a row's first real token is position 0).
Sampling (greedy, temperature, top-k, top-p) is deterministic for a given key: step t draws
with fold_in(key, t).

The decoder runs layer by layer over each layer's own arrays (`LayerwiseDecoder`), not over
the stacked arrays the Decoder scans in training: a step over those slices every layer's
weights out of them, a copy per token on XLA's CPU backend (docs/benchmarks.md: SmolLM2
decoded 20-35% more tokens per second this way). The split copies the layers' weights once;
the unrolled layers compile in about 9 s instead of 2-3.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.models.decoder import (Decoder, DecoderLayer, LayerInputs, RMSNorm, cache_mask,
                                    frequencies, project)

BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn from the logits. temperature 0 is greedy (argmax);
  otherwise logits / temperature, keeping the top_k largest (0: all) and the smallest set
  whose probability reaches top_p (the nucleus, Holtzman et al. 2020; 1: all)."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p {self.top_p} is outside (0, 1].')
    if self.temperature < 0:
      raise ValueError(f'temperature {self.temperature} is negative.')
    if self.top_k < 0:
      raise ValueError(f'top_k {self.top_k} is negative.')


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """(B, V) float32 logits -> (B,) int32 token ids."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # the probability of the larger ones
    # Keep a token while the larger ones do not yet reach top_p (the first always stays).
    cutoff = jnp.min(jnp.where(before < sampling.top_p, ordered, jnp.inf), axis=-1,
                     keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def bucket(length: int, limit: int) -> int:
  """The smallest bucket that holds `length` tokens, at most `limit`."""
  for size in BUCKETS:
    if size >= length:
      return min(size, limit)
  return limit


def split_layers(params: dict) -> dict:
  """A Decoder's parameters with 'layers' as one tree per layer instead of stacked ones."""
  layers = params['layers']
  count = len(jax.tree.leaves(layers)[0])
  return {**params, 'layers': [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(count)]}


class LayerwiseDecoder:
  """The Decoder's forward pass with a KV cache, over split_layers' parameters: the same
  DecoderLayer, the final RMSNorm and output projection, with the layers looped unrolled."""

  def __init__(self, model: Decoder):
    cfg = self.cfg = model.cfg
    attention_factor = frequencies(cfg, jnp.zeros((1, 1), jnp.int32))[1]
    self.layer = DecoderLayer(cfg, attention_factor, model.adapter)
    self.norm = RMSNorm(cfg.rms_norm_eps)

  def init_cache(self, batch: int, length: int) -> tuple:
    """Each layer's (keys, values), (B, T, K, d) in the compute dtype."""
    shape = (batch, length, self.cfg.num_kv_heads, self.cfg.head_dim)
    return tuple((jnp.zeros(shape, self.cfg.dtype), jnp.zeros(shape, self.cfg.dtype))
                 for _ in range(self.cfg.num_layers))

  def __call__(self, params, tokens, positions, mask, cache, cache_start):
    """(final hidden states (B, S, D), the cache with this chunk written at cache_start);
    mask (B, S, T) from cache_mask."""
    embedding = params['embed']['embedding']
    x = jnp.take(embedding, tokens, axis=0).astype(self.cfg.dtype)
    inputs = LayerInputs(positions, mask, None, frequencies(self.cfg, positions)[0],
                         cache_start)
    updated = []
    for layer, layer_cache in zip(params['layers'], cache):
      x, (layer_cache, _) = self.layer.apply({'params': layer}, x, layer_cache, inputs)
      updated.append(layer_cache)
    return self.norm.apply({'params': params['final_norm']}, x), tuple(updated)

  def logits(self, params, hidden):
    """Decoder.logits over the split parameters."""
    tied = self.cfg.tie_word_embeddings
    table = params['embed']['embedding'] if tied else params['lm_head']
    return project(table, 1 if tied else 0, jnp.dtype(self.cfg.dtype), hidden)


class Generator:
  """Generates continuations of token-id prompts with a decoder's parameters.

  `stop_ids`: token ids that end a row (EOS, end of turn); the stop token is kept in the
  output. `pad_id` fills a finished row's remaining slots (never returned). `params` may be
  None, then set (split_layers') before generating: the compiled programs stay."""

  def __init__(self, model: Decoder, params, stop_ids: Sequence[int], pad_id: int):
    self.model, self.decoder = model, LayerwiseDecoder(model)
    self.params = None if params is None else split_layers(params)
    self.stop_ids = np.asarray(sorted(set(stop_ids)), np.int32)
    self.pad_id = pad_id
    self._prefill = jax.jit(self._prefill_fn, static_argnums=(5,), donate_argnums=(3,))
    self._step = jax.jit(self._step_fn, static_argnums=(8,), donate_argnums=(3,))

  def _prefill_fn(self, params, tokens, mask, cache, key, sampling):
    """The prompts (B, P) into cache slots 0 .. P-1; the first new token (B,)."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    key_valid = jnp.zeros(cache[0][0].shape[:2], bool).at[:, :tokens.shape[1]].set(mask > 0)
    hidden, cache = self.decoder(params, tokens, positions,
                                 cache_mask(key_valid, 0, tokens.shape[1],
                                            self.model.cfg.sliding_window), cache, 0)
    token = sample(self.decoder.logits(params, hidden[:, -1]), jax.random.fold_in(key, 0),
                   sampling)
    return token, cache, key_valid, positions[:, -1] + 1

  def _step_fn(self, params, token, position, cache, key_valid, slot, step, key, sampling):
    """Feeds `token` (B,) at cache slot `slot` and rotary `position` (B,); the next one."""
    key_valid = key_valid.at[:, slot].set(True)
    hidden, cache = self.decoder(params, token[:, None], position[:, None],
                                 cache_mask(key_valid, slot, 1, self.model.cfg.sliding_window),
                                 cache, slot)
    token = sample(self.decoder.logits(params, hidden[:, 0]), jax.random.fold_in(key, step),
                   sampling)
    return token, cache, key_valid

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               sampling: Sampling = Sampling(), key: jax.Array | None = None,
               stop: Callable[[int, list[int]], bool] | None = None,
               on_token: Callable[[np.ndarray, np.ndarray], None] | None = None
               ) -> list[list[int]]:
    """Each prompt's new tokens (at most max_new_tokens, ending with a stop id if one
    came). `stop(row, tokens)` may end a row early (stop strings); `on_token(tokens,
    active)` sees each step's (B,) tokens and which rows they belong to (streaming)."""
    cfg = self.model.cfg
    if max_new_tokens <= 0:
      raise ValueError(f'max_new_tokens {max_new_tokens} must be positive.')
    if not prompts or min(len(p) for p in prompts) == 0:
      raise ValueError('every prompt needs at least one token.')
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_position_embeddings:
      raise ValueError(f'a prompt of {longest} tokens plus max_new_tokens {max_new_tokens} '
                       f'is longer than the cache (max_position_embeddings '
                       f'{cfg.max_position_embeddings}).')
    length = bucket(longest, cfg.max_position_embeddings - max_new_tokens)
    tokens = np.full((len(prompts), length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):  # left padding: every row ends at the last slot
      tokens[row, length - len(prompt):], mask[row, length - len(prompt):] = prompt, 1
    key = jax.random.key(0) if key is None else key
    cache = self.decoder.init_cache(len(prompts), length + max_new_tokens)
    token, cache, key_valid, position = self._prefill(self.params, tokens, mask, cache, key,
                                                      sampling)
    outputs = [[] for _ in prompts]
    active = np.ones(len(prompts), bool)
    for t in range(max_new_tokens):
      token = np.asarray(token)
      for row in np.flatnonzero(active):
        outputs[row].append(int(token[row]))
      if on_token is not None:
        on_token(token, active.copy())
      finished = np.isin(token, self.stop_ids)
      if stop is not None:
        finished |= np.array([bool(active[r]) and stop(r, outputs[r])
                              for r in range(len(prompts))])
      active &= ~finished
      if not active.any() or t == max_new_tokens - 1:
        break
      token = np.where(active, token, self.pad_id).astype(np.int32)
      token, cache, key_valid = self._step(self.params, token, position, cache, key_valid,
                                           length + t, t + 1, key, sampling)
      position = position + 1
    return outputs
