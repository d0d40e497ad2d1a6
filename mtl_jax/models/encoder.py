"""A BERT-architecture Transformer encoder in Flax linen.

The parameter tree maps one-to-one onto a BERT checkpoint (Hugging Face names on the right;
a torch Linear weight is the transpose of a Dense kernel):

  embeddings/word_embeddings/embedding        embeddings.word_embeddings.weight
  embeddings/position_embeddings/embedding    embeddings.position_embeddings.weight
  embeddings/token_type_embeddings/embedding  embeddings.token_type_embeddings.weight
  embeddings/LayerNorm/{scale,bias}           embeddings.LayerNorm.{weight,bias}
  layer_{i}/attention/{query,key,value}/*     encoder.layer.{i}.attention.self.{query,key,value}.*
  layer_{i}/attention/output/*                encoder.layer.{i}.attention.output.dense.*
  layer_{i}/attention_LayerNorm/*             encoder.layer.{i}.attention.output.LayerNorm.*
  layer_{i}/intermediate/*                    encoder.layer.{i}.intermediate.dense.*
  layer_{i}/output/*                          encoder.layer.{i}.output.dense.*
  layer_{i}/output_LayerNorm/*                encoder.layer.{i}.output.LayerNorm.*
  pooler/*                                    pooler.dense.*

Every parameter carries logical axis names (nn.with_logical_partitioning); the rules in
mtl_jax.parallel.mesh map them onto the device mesh. `init` returns them boxed
(nn.LogicallyPartitioned); nn.unbox gives the plain arrays, and `apply` takes either.
"""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


DTYPES = ('float32', 'bfloat16')
# How a layer's token states become one sentence feature: BERT's [CLS] state, or the mean
# over the non-padding tokens (Sentence-BERT). A from-scratch [CLS] state hardly depends on
# the input at init (docs/results.md), a mean of token states does.
POOLINGS = ('cls', 'mean')
# Per-layer rematerialisation policies: what a layer keeps from its forward pass.
REMAT = {
    'none': None,  # everything (no recomputation)
    'full': jax.checkpoint_policies.nothing_saveable,  # only the layer's input
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # matmul outputs
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  vocab_size: int
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 4
  intermediate_size: int = 1024
  max_len: int = 128
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  pooler: bool = True
  pooling: str = 'cls'  # POOLINGS: the sentence feature of a layer (and the pooler's input)
  # A sentence-pair task's head reads pair_features (the two segments' mean token states
  # compared), not the sentence feature: see pair_features.
  pair_features: bool = False
  # The hidden width of the heads that read pair_features (InferSent's MLP classifier has
  # 512); 0 = a linear head like every other task's.
  pair_head_hidden: int = 0
  initializer_range: float = 0.02
  dtype: str = 'float32'  # compute dtype ('bfloat16'); parameters always stay float32
  remat: str = 'none'  # recompute each layer's activations in the backward pass: REMAT
  # A Hugging Face checkpoint folder whose weights replace init's (models/pretrained.py);
  # the module never reads it, training code does. '' = random init.
  pretrained: str = ''

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by num_heads '
                       f'{self.num_heads}.')
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype {self.dtype!r} is not one of {DTYPES}.')
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling {self.pooling!r} is not one of {POOLINGS}.')
    if self.remat not in REMAT:
      raise ValueError(f'remat {self.remat!r} is not one of {sorted(REMAT)}.')


class LayerNorm(nn.Module):
  """LayerNorm over the last axis (flax's parameter names). Scale is applied after
  normalising, so XLA never materialises a (B, S, D) rsqrt(var) * scale product."""
  epsilon: float

  @nn.compact
  def __call__(self, x):
    """Statistics in float32 whatever x's dtype; the output keeps x's dtype."""
    features, dtype = x.shape[-1], x.dtype
    x = x.astype(jnp.float32)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (features,))
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (features,))
    centred = x - x.mean(-1, keepdims=True)
    variance = jnp.square(centred).mean(-1, keepdims=True)
    return (centred * jax.lax.rsqrt(variance + self.epsilon) * scale + bias).astype(dtype)


def gelu(x):
  """Exact (erf) GELU, written as BERT/torch do; cheaper on CPU than jax.nn.gelu's erfc."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (0.5 ** 0.5)))


def dense_init(stddev: float, axes: tuple[str | None, str | None]) -> dict:
  """A Dense layer's initialisers, its (input, output) kernel axes named for sharding."""
  return dict(
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def _dense(features, cfg, name, axes):
  """A Dense layer applied to the tokens as one (N, D) matrix. With a 3-D input, the kernel
  gradient would contract two axes, and XLA then transposes the whole activation gradient
  into a copy before the matmul; a single contracting axis needs no copy."""
  dense = nn.Dense(features, dtype=cfg.dtype, name=name,
                   **dense_init(cfg.initializer_range, axes))
  return lambda x: dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], features)


def attention_bias(attention_mask: jax.Array, dtype) -> jax.Array:
  """(B, S) mask -> (B, 1, 1, S) additive bias over keys: padding gets a large negative
  logit. The mask is only compared, so its gradient (float masks) is exactly zero."""
  return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with BERT's separate query/key/value projections."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.cfg
    batch, length, width = x.shape
    heads, head_dim = cfg.num_heads, width // cfg.num_heads
    # Tensor parallelism splits the heads: q/k/v shard their output, `output` its input.
    q, k, v = (_dense(width, cfg, name, ('embed', 'heads'))(x)
               .reshape(batch, length, heads, head_dim) for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * (head_dim ** -0.5), k)
    weights = jax.nn.softmax((logits + bias).astype(jnp.float32), axis=-1).astype(x.dtype)
    weights = nn.Dropout(cfg.attention_dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, width)
    return _dense(width, cfg, 'output', ('heads', 'embed'))(out)


class Layer(nn.Module):
  """A post-LayerNorm Transformer block, as in BERT."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.cfg
    dropout = nn.Dropout(cfg.dropout_rate)
    h = SelfAttention(cfg, name='attention')(x, bias, deterministic)
    x = LayerNorm(cfg.layer_norm_eps, name='attention_LayerNorm')(
        x + dropout(h, deterministic=deterministic))
    h = gelu(_dense(cfg.intermediate_size, cfg, 'intermediate', ('embed', 'mlp'))(x))
    h = _dense(cfg.hidden_size, cfg, 'output', ('mlp', 'embed'))(h)
    return LayerNorm(cfg.layer_norm_eps, name='output_LayerNorm')(
        x + dropout(h, deterministic=deterministic))


class Embeddings(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, deterministic):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name, axis: nn.Embed(
        n, cfg.hidden_size, embedding_init=nn.with_logical_partitioning(init, (axis, 'embed')),
        dtype=cfg.dtype, name=name)
    positions = jnp.arange(input_ids.shape[-1])
    x = (embed(cfg.vocab_size, 'word_embeddings', 'vocab')(input_ids)
         + embed(cfg.max_len, 'position_embeddings', None)(positions)
         + embed(cfg.type_vocab_size, 'token_type_embeddings', None)(segment_ids))
    x = LayerNorm(cfg.layer_norm_eps, name='LayerNorm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


def mean_pool(sequence: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """(B, S, D) token states -> (B, D): their mean over the tokens the mask keeps."""
  mask = (attention_mask > 0)[..., None].astype(sequence.dtype)
  return (sequence * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


def sentence(sequence: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """A layer's sentence feature (B, D) by `pooling` (POOLINGS)."""
  return sequence[:, 0] if pooling == 'cls' else mean_pool(sequence, attention_mask)


def pair_features(sequence: jax.Array, attention_mask: jax.Array,
                  segment_ids: jax.Array) -> jax.Array:
  """(B, S, D) token states of sentence pairs -> (B, 4D): [u, v, |u - v|, u * v], with u
  and v the mean states of the first and the second segment (InferSent's features, Conneau
  et al. 2017). Comparing two sentences is then elementwise: a small encoder trained from
  scratch does not learn in a few hundred steps to match tokens across segments by
  attention (docs/results.md)."""
  keep = attention_mask > 0
  u = mean_pool(sequence, keep & (segment_ids == 0))
  v = mean_pool(sequence, keep & (segment_ids == 1))
  return jnp.concatenate([u, v, jnp.abs(u - v), u * v], axis=-1)


class EncoderOutput(flax.struct.PyTreeNode):
  hidden_states: tuple[jax.Array, ...]  # embeddings, then each layer: L + 1 arrays (B, S, D)
  pooled: jax.Array | None  # tanh(dense(last layer's sentence feature)) when the pooler is on
  attention_mask: jax.Array  # (B, S): which tokens a mean-pooled sentence feature averages
  segment_ids: jax.Array  # (B, S): 0 for the first sentence of a pair, 1 for the second


class Encoder(nn.Module):
  """Token ids -> every layer's hidden states (hierarchical heads read lower layers)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids, attention_mask, *, deterministic=True):
    cfg = self.cfg
    if input_ids.shape[-1] > cfg.max_len:
      raise ValueError(f'Sequence length {input_ids.shape[-1]} exceeds max_len {cfg.max_len}.')
    x = Embeddings(cfg, name='embeddings')(input_ids, segment_ids, deterministic)
    bias = attention_bias(attention_mask, x.dtype)
    hidden_states = [x]
    layer = Layer if cfg.remat == 'none' else nn.remat(
        Layer, policy=REMAT[cfg.remat], static_argnums=(3,))  # (self, x, bias, deterministic)
    for i in range(cfg.num_layers):
      x = layer(cfg, name=f'layer_{i}')(x, bias, deterministic)
      hidden_states.append(x)
    pooled = None
    if cfg.pooler:
      pooled = jnp.tanh(_dense(cfg.hidden_size, cfg, 'pooler', ('embed', None))(
          sentence(x, attention_mask, cfg.pooling)))
    return EncoderOutput(tuple(hidden_states), pooled, attention_mask, segment_ids)
