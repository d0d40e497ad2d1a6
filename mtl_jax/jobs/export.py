"""python -m mtl_jax.jobs.export WORKDIR OUT [--phase P --task T]

Writes the decoder LLM a run trained as a Hugging Face folder OUT that transformers loads:
config.json, float32 model.safetensors, and the run's tokenizer (tokenizer.json and
tokenizer_config.json with its special tokens and chat template). The run is a main-job
workdir whose backbone is the decoder (model.backbone='decoder') with an LLM's tokenizer
(model.pretrained, or data.vocabulary); its config comes from WORKDIR/config.json and its
parameters from the phase's last checkpoint. The task heads are not part of the export: it is
the language model the heads sat on. OUT must not exist, or be empty.

`run_decoder` is what `python -m mtl_jax.generate --workdir` answers with.
"""

import argparse
import os
import tempfile
from typing import NamedTuple

import jax

from mtl_jax import config as config_lib
from mtl_jax.data import llm_tokenizer
from mtl_jax.data.pipeline import load_task_data
from mtl_jax.jobs import main as main_job
from mtl_jax.jobs.submit import check_phase, run_config
from mtl_jax.models import llama_checkpoint
from mtl_jax.models.decoder import DecoderConfig
from mtl_jax.train import loop


class RunDecoder(NamedTuple):
  """A run's trained decoder: its config, float32 parameters (numpy) and tokenizer."""
  cfg: DecoderConfig
  params: dict
  tokenizer: llm_tokenizer.LlmTokenizer


def run_decoder(workdir: str, phase: str = 'multi', task: str | None = None) -> RunDecoder:
  """The decoder the run in `workdir` trained in `phase` ('single' and 'finetune' name their
  `task`). ValueError, naming the run, when it trained no decoder or used no LLM tokenizer."""
  config = config_lib.resolved(run_config(workdir))
  check_phase(config, phase, workdir)
  if config.model.get('backbone', 'encoder') != 'decoder':
    raise ValueError(f'{workdir}: the run trained an encoder (config.model.backbone '
                     f'{config.model.get("backbone", "encoder")!r}); only a decoder writes text.')
  if not config.data.vocabulary:
    raise ValueError(f'{workdir}: the run learnt a WordPiece vocabulary (config.data.vocabulary '
                     f'\'\'); a decoder that writes text needs an LLM\'s tokenizer '
                     f'(config.model.pretrained or config.data.vocabulary).')
  run_tasks = config_lib.validate(config)
  names = [t.name for t in run_tasks]
  if (phase == 'multi') != (task is None) or (task is not None and task not in names):
    raise ValueError(f'phase {phase!r} takes ' + ('no task.' if phase == 'multi' else
                                                   f'one of the run\'s tasks {names}, got '
                                                   f'{task!r}.'))
  data = load_task_data(config.data, run_tasks)
  spec = next((t for t in run_tasks if t.name == task), None)
  model, params = loop.trained_params(*main_job.fit_args(config, run_tasks, data, workdir,
                                                         phase, spec))
  if 'encoder' not in params:
    raise ValueError(f'{workdir}: architecture {config.model.architecture!r} holds no single '
                     f'decoder to write text with.')
  return RunDecoder(model.encoder_config.decoder, jax.device_get(params['encoder']),
                    llm_tokenizer.load_llm_tokenizer(config.data.vocabulary))


def export(workdir: str, out: str, phase: str = 'multi', task: str | None = None) -> str:
  """Writes the run's decoder (run_decoder) to the Hugging Face folder `out`; returns it."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ValueError(f'{out}: exists and is not an empty folder; not overwritten.')
  run = run_decoder(workdir, phase, task)
  ids = {f'{key}_token_id': getattr(run.tokenizer, f'{key}_id') for key in ('bos', 'eos', 'pad')}
  with tempfile.TemporaryDirectory() as folder:
    run.tokenizer.save(folder)
    files = {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))}
    return llama_checkpoint.write_hf(out, run.cfg, run.params, files,
                                     {k: i for k, i in ids.items() if i is not None})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir')
  parser.add_argument('out')
  parser.add_argument('--phase', default='multi', choices=main_job.PHASES,
                      help='the multi-task model (default), or a task\'s fine-tuned model or '
                           'single-task baseline (with --task)')
  parser.add_argument('--task', help='the task of phase finetune or single')
  args = parser.parse_args(argv)
  try:
    print(f'wrote {export(args.workdir, args.out, args.phase, args.task)}')
  except (FileNotFoundError, ValueError) as e:
    parser.exit(2, f'FATAL {e}\n')


if __name__ == '__main__':
  main()
