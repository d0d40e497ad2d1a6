"""A decoder-only Transformer with the Llama layout, in Flax linen.

One module covers Llama (1-3), SmolLM, Mistral (sliding-window attention) and Qwen2/3:
pre-RMSNorm blocks, rotary position embeddings (models/rope.py: none, linear, dynamic,
llama3, yarn), a SwiGLU MLP, grouped-query attention whose head size need not be
width / heads, optional q/k/v biases (Qwen2) and per-head RMSNorm on queries and keys
(Qwen3), tied or untied output embeddings.

The layers are one nn.scan over a stacked layer (a 30-layer model traces one layer), each
optionally rematerialised. The parameter tree (leading L = the layer axis of the stack),
with Hugging Face's names on the right (a torch Linear weight is the transpose of a kernel,
its output axis split into heads):

  embed/embedding                 (V, D)         model.embed_tokens.weight
  layers/attention_norm/scale     (L, D)         model.layers.{i}.input_layernorm.weight
  layers/attention/q/kernel       (L, D, H, d)   model.layers.{i}.self_attn.q_proj.weight
  layers/attention/{k,v}/kernel   (L, D, K, d)   ... k_proj, v_proj (bias: (L, H|K, d))
  layers/attention/o/kernel       (L, H, d, D)   ... o_proj.weight
  layers/attention/{q,k}_norm/scale (L, d)       ... q_norm, k_norm (Qwen3)
  layers/mlp_norm/scale           (L, D)         model.layers.{i}.post_attention_layernorm.weight
  layers/mlp/{gate,up}/kernel     (L, D, F)      model.layers.{i}.mlp.{gate,up}_proj.weight
  layers/mlp/down/kernel          (L, F, D)      model.layers.{i}.mlp.down_proj.weight
  final_norm/scale                (D,)           model.norm.weight
  lm_head                         (D, V)         lm_head.weight (untied models only)

Attention reads an explicit boolean mask (B, queries, keys): `segment_mask` builds it for
training rows, where several examples may be packed (segment ids, positions restarting per
segment), and `cache_mask` for decoding against the KV cache. Every projection calls the
decoder's adapter hook with the per-token task ids (identity when there is none), so
task-specific modules plug in without editing the layers.

Precision: parameters are float32; with dtype 'bfloat16' activations and matmul inputs are
bfloat16, matmuls accumulate in float32, and norms, softmax, rotary and logits are float32.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models import rope
from mtl_jax.models.encoder import DTYPES, REMAT

# The logical axis names of the parameters (mtl_jax.parallel.mesh maps them onto a mesh).
EMBED, VOCAB, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS = (
    'embed', 'vocab', 'heads', 'kv_heads', 'head_dim', 'mlp', 'layers')
NEG_INF = -1e30  # a finite "minus infinity": a query with no visible key gets no NaN
QUERY_BLOCK = 512  # attend() takes longer rows this many queries at a time
PROJECTIONS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')  # what an adapter hook may wrap


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int
  hidden_size: int = 576
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int = 0  # 0: hidden_size // num_heads
  intermediate_size: int = 1536
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Hugging Face's rope_scaling dict as sorted (key, value) pairs (a frozen config hashes).
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = True
  attention_bias: bool = False  # q/k/v biases (Qwen2)
  qk_norm: bool = False  # RMSNorm over each query and key head (Qwen3)
  sliding_window: int = 0  # a query sees at most this many latest keys (Mistral); 0: all
  initializer_range: float = 0.02
  dtype: str = 'float32'  # compute dtype (DTYPES); parameters stay float32
  remat: str = 'none'  # what each layer keeps for the backward pass (encoder.REMAT)

  def __post_init__(self):
    if min(self.num_heads, self.num_kv_heads) < 1:
      raise ValueError(f'num_heads {self.num_heads} and num_kv_heads {self.num_kv_heads} '
                       f'must be positive.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} is not divisible by num_kv_heads '
                       f'{self.num_kv_heads}.')
    if not self.head_dim and self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads '
                       f'{self.num_heads}; set head_dim.')
    if not self.head_dim:  # one config, one spelling: 0 becomes the size it stands for
      object.__setattr__(self, 'head_dim', self.hidden_size // self.num_heads)
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype {self.dtype!r} is not one of {DTYPES}.')
    if self.remat not in REMAT:
      raise ValueError(f'remat {self.remat!r} is not one of {sorted(REMAT)}.')
    if self.sliding_window < 0:
      raise ValueError(f'sliding_window {self.sliding_window} is negative.')
    rope.inverse_frequencies(self.head_dim, self.rope_theta, self.scaling,
                             self.max_position_embeddings)  # refuses a bad rope here

  @property
  def scaling(self) -> dict:
    return dict(self.rope_scaling)


def segment_mask(segment_ids: jax.Array, positions: jax.Array, sliding_window: int = 0
                 ) -> jax.Array:
  """(B, S, S): query i sees key j of its own segment at or before it (segment 0 is
  padding and sees nothing); with a window, only keys fewer than `sliding_window`
  positions back."""
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  index = jnp.arange(segment_ids.shape[1])
  mask = same & (index[None, :, None] >= index[None, None, :])
  if sliding_window:
    mask &= positions[:, :, None] - positions[:, None, :] < sliding_window
  return mask


def cache_mask(key_valid: jax.Array, start: jax.Array, num_queries: int,
               sliding_window: int = 0) -> jax.Array:
  """(B, Sq, T) for queries in cache slots start .. start + Sq - 1 against a cache of T
  slots, of which `key_valid` (B, T) marks those holding a real token (left padding and
  unwritten slots do not)."""
  query = start + jnp.arange(num_queries)
  key = jnp.arange(key_valid.shape[1])
  mask = key_valid[:, None, :] & (key[None, None, :] <= query[None, :, None])
  if sliding_window:
    # Slots are consecutive positions within a row (its padding is all on the left).
    mask &= query[None, :, None] - key[None, None, :] < sliding_window
  return mask


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions that restart at 0 at each segment of a packed row (B, S)."""
  index = jnp.arange(segment_ids.shape[1])
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - start_index


def frequencies(cfg: DecoderConfig, positions: jax.Array) -> tuple[jax.Array, float]:
  """(rotary inverse frequencies (d/2,), attention factor) for these positions: a dynamic
  rope's frequencies grow with the longest position (max + 1), as transformers' do."""
  inv_freq, factor = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.scaling,
                                              cfg.max_position_embeddings)
  if rope.rope_type(cfg.scaling) == 'dynamic':
    inv_freq = rope.dynamic_frequencies(cfg.head_dim, cfg.rope_theta, cfg.scaling['factor'],
                                        cfg.max_position_embeddings, positions.max() + 1)
  return jnp.asarray(inv_freq, jnp.float32), float(factor)


class RMSNorm(nn.Module):
  """x / rms(x) · scale over the last axis, in float32; the output keeps x's dtype."""
  epsilon: float
  axis_name: str = EMBED

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (x.shape[-1],))
    y = x.astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(x.dtype)


class Projection(nn.Module):
  """A linear map over x's last `in_dims` axes onto `features`, accumulated in float32,
  then the adapter hook: `adapter(projection=name)` is a module called as
  (x, y, task_ids) -> y, so an adapter may add to or replace the projection per token."""
  features: tuple[int, ...]
  axes: tuple[str, ...]  # the kernel's logical axes: input axes, then output axes
  cfg: DecoderConfig
  in_dims: int = 1
  use_bias: bool = False
  adapter: Callable[..., nn.Module] | None = None

  @nn.compact
  def __call__(self, x, task_ids):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    in_shape = x.shape[-self.in_dims:]
    kernel = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.normal(cfg.initializer_range), self.axes),
                        (*in_shape, *self.features))
    # As one (N, inputs) matrix: the kernel's gradient then contracts a single axis.
    flat = x.reshape(-1, *in_shape).astype(dtype)
    contract = tuple(range(1, 1 + self.in_dims))
    y = jax.lax.dot_general(flat, kernel.astype(dtype),
                            ((contract, tuple(range(self.in_dims))), ((), ())),
                            preferred_element_type=jnp.float32)
    if self.use_bias:
      y = y + self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, self.axes[self.in_dims:]), self.features)
    y = y.astype(dtype).reshape(*x.shape[:-self.in_dims], *self.features)
    if self.adapter is None:
      return y
    return self.adapter(projection=self.name, name='adapter')(x, y, task_ids)


def attend(q, k, v, mask, block: int = QUERY_BLOCK):
  """Grouped-query attention: q (B, Sq, H, d) over k, v (B, Sk, K, d), each group of
  H / K query heads sharing one key/value head; mask (B, Sq, Sk). Softmax in float32.

  More than `block` queries are taken `block` at a time, each block rematerialised: the
  float32 scores of a long row, B·H·Sq·Sk, never exist at once (at sequence 2048 they would
  outweigh the rest of SmolLM2's step). A query's softmax still sees all its keys, so the
  blocks compute exactly what one pass does."""
  batch, length, heads, size = q.shape
  if length <= block:
    return _attend_block(q, k, v, mask)
  pad = (-length) % block
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))  # padded queries see nothing
  blocks = lambda x: jnp.moveaxis(x.reshape(batch, -1, block, *x.shape[2:]), 1, 0)
  out = jax.lax.map(jax.checkpoint(lambda qm: _attend_block(qm[0], k, v, qm[1])),
                    (blocks(q), blocks(mask)))
  return jnp.moveaxis(out, 0, 1).reshape(batch, length + pad, heads, size)[:, :length]


def _attend_block(q, k, v, mask):
  batch, length, heads, size = q.shape
  groups = heads // k.shape[2]
  q = q.reshape(batch, length, k.shape[2], groups, size)
  logits = jnp.einsum('bqkgd,bskd->bkgqs', q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None, None], logits * size ** -0.5, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgqs,bskd->bqkgd', weights, v, preferred_element_type=jnp.float32)
  return out.reshape(batch, length, heads, size).astype(v.dtype)


class LayerInputs(NamedTuple):
  """What every layer reads (broadcast over the layer scan)."""
  positions: jax.Array  # (B, S) rotary positions
  mask: jax.Array  # (B, S, keys) which keys each query sees
  task_ids: jax.Array | None  # (B, S) for the adapter hook
  inv_freq: jax.Array  # (d/2,) rotary frequencies
  cache_start: jax.Array | None  # the cache slot of the first query (decoding)


class Attention(nn.Module):
  cfg: DecoderConfig
  attention_factor: float
  adapter: Callable[..., nn.Module] | None = None

  @nn.compact
  def __call__(self, x, inputs: LayerInputs, cache):
    cfg = self.cfg
    size = cfg.head_dim
    project = lambda name, features, axes, **kw: Projection(
        features, axes, cfg, adapter=self.adapter, name=name, **kw)(x, inputs.task_ids)
    q = project('q', (cfg.num_heads, size), (EMBED, HEADS, HEAD_DIM), use_bias=cfg.attention_bias)
    k, v = (project(name, (cfg.num_kv_heads, size), (EMBED, KV_HEADS, HEAD_DIM),
                    use_bias=cfg.attention_bias) for name in ('k', 'v'))
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, HEAD_DIM, name='q_norm')(q)
      k = RMSNorm(cfg.rms_norm_eps, HEAD_DIM, name='k_norm')(k)
    q, k = (rope.rotate(t, inputs.positions, inputs.inv_freq, self.attention_factor)
            for t in (q, k))
    if cache is not None:  # write this chunk into the cache, then attend over all of it
      update = lambda c, t: jax.lax.dynamic_update_slice_in_dim(
          c, t.astype(c.dtype), inputs.cache_start, axis=1)
      k, v = cache = update(cache[0], k), update(cache[1], v)
    out = attend(q, k, v, inputs.mask)
    return Projection((cfg.hidden_size,), (HEADS, HEAD_DIM, EMBED), cfg, in_dims=2,
                      adapter=self.adapter, name='o')(out, inputs.task_ids), cache


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) · up(x)), the product in float32."""
  cfg: DecoderConfig
  adapter: Callable[..., nn.Module] | None = None

  @nn.compact
  def __call__(self, x, task_ids):
    cfg = self.cfg
    project = lambda name, features, axes, h: Projection(
        (features,), axes, cfg, adapter=self.adapter, name=name)(h, task_ids)
    gate = project('gate', cfg.intermediate_size, (EMBED, MLP), x)
    up = project('up', cfg.intermediate_size, (EMBED, MLP), x)
    hidden = (jax.nn.silu(gate.astype(jnp.float32)) * up).astype(x.dtype)
    return project('down', cfg.hidden_size, (MLP, EMBED), hidden)


class DecoderLayer(nn.Module):
  """A pre-RMSNorm block: x + attention(norm(x)), then + SwiGLU(norm(x)). In the
  Decoder's scan its carry is the hidden states and its cache None; generation
  (models/generation.py) calls it layer by layer with the layer's KV cache, which it returns
  updated (with, if asked, the layer's output states)."""
  cfg: DecoderConfig
  attention_factor: float
  adapter: Callable[..., nn.Module] | None = None
  keep_states: bool = False

  @nn.compact
  def __call__(self, x, cache, inputs: LayerInputs):
    cfg = self.cfg
    h, cache = Attention(cfg, self.attention_factor, self.adapter, name='attention')(
        RMSNorm(cfg.rms_norm_eps, name='attention_norm')(x), inputs, cache)
    x = x + h
    x = x + Mlp(cfg, self.adapter, name='mlp')(
        RMSNorm(cfg.rms_norm_eps, name='mlp_norm')(x), inputs.task_ids)
    return x, (cache, x if self.keep_states else None)


class DecoderOutput(NamedTuple):
  hidden: jax.Array  # (B, S, D) the last layer's states after the final norm
  layer_states: jax.Array | None  # (L, B, S, D) each layer's output, when asked for


class Decoder(nn.Module):
  """Token ids -> final hidden states (and `logits` of them). `adapter` is the hook every
  projection calls (Projection); None is the identity."""
  cfg: DecoderConfig
  adapter: Callable[..., nn.Module] | None = None
  keep_states: bool = False  # also return every layer's states (hierarchical heads)

  def setup(self):
    cfg = self.cfg
    _, attention_factor = rope.inverse_frequencies(
        cfg.head_dim, cfg.rope_theta, cfg.scaling, cfg.max_position_embeddings)
    self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=(
        nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range),
                                     (VOCAB, EMBED))), name='embed')
    layer = DecoderLayer
    if cfg.remat != 'none':
      layer = nn.remat(layer, policy=REMAT[cfg.remat], prevent_cse=False)
    self.layers = nn.scan(layer, variable_axes={'params': 0}, split_rngs={'params': True},
                          in_axes=(0, nn.broadcast), length=cfg.num_layers,
                          metadata_params={nn.PARTITION_NAME: LAYERS})(
        cfg, attention_factor, self.adapter, self.keep_states, name='layers')
    self.final_norm = RMSNorm(cfg.rms_norm_eps, name='final_norm')
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param('lm_head', nn.with_logical_partitioning(
          nn.initializers.normal(cfg.initializer_range), (EMBED, VOCAB)),
                                (cfg.hidden_size, cfg.vocab_size))

  def __call__(self, tokens, positions, mask, task_ids=None) -> DecoderOutput:
    """tokens, positions, task_ids (B, S); mask (B, S, S) from segment_mask. (Cached
    decoding runs the same layers over each layer's own arrays: models/generation.py.)"""
    x = self.embed(tokens).astype(self.cfg.dtype)
    inputs = LayerInputs(positions, mask, task_ids, frequencies(self.cfg, positions)[0], None)
    x, (_, states) = self.layers(x, None, inputs)
    return DecoderOutput(self.final_norm(x), states)

  def output_projection(self) -> Callable[[jax.Array], jax.Array]:
    """The pure function `logits` computes, over this decoder's table (for a caller that
    projects inside a JAX transform, such as a chunked loss)."""
    tied = self.cfg.tie_word_embeddings
    return functools.partial(project, self.embed.embedding if tied else self.lm_head,
                             1 if tied else 0, jnp.dtype(self.cfg.dtype))

  def logits(self, hidden):
    """(..., D) -> (..., V) in float32: against the embedding table when tied."""
    return self.output_projection()(hidden)


def project(table: jax.Array, width_axis: int, dtype, hidden: jax.Array) -> jax.Array:
  """(..., D) hidden states -> (..., V) float32 logits against `table`, (V, D) or (D, V),
  contracted on its `width_axis` as it is stored: an einsum over the tied table's transpose
  copied the whole table for every decoded token."""
  dims = (((hidden.ndim - 1,), (width_axis,)), ((), ()))
  return jax.lax.dot_general(hidden.astype(dtype), table.astype(dtype), dims,
                             preferred_element_type=jnp.float32)


def train_flops(cfg: DecoderConfig, batch: int, seq: int) -> tuple[float, int]:
  """(FLOPs of one training step, N), PaLM's appendix-B count: 6·N·T + 12·L·H·d·S·T for
  T = batch·seq tokens, N the matmul parameters (each layer's q, k, v, o, gate, up and down
  kernels and the output projection, which a tied model's embedding table is used as once
  more), the second term QKᵀ and AV over the whole S×S scores, forward and backward."""
  d_model, heads, kv, size = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  layer = (2 * d_model * heads * size + 2 * d_model * kv * size  # q and o, k and v
           + 3 * d_model * cfg.intermediate_size)  # gate, up, down
  n = cfg.num_layers * layer + d_model * cfg.vocab_size  # + the output projection
  tokens = batch * seq
  return 6.0 * n * tokens + 12.0 * cfg.num_layers * heads * size * seq * tokens, n
