"""Test-split predictions of a finished run, in the files the GLUE and SuperGLUE leaderboards
take (docs/datasets.md, "Submitting to the leaderboards").

python -m mtl_jax.jobs.submit WORKDIR [--phase multi|finetune|single] [--out DIR]
                                   [--tasks TASK ...]

The run's parameters come from its last checkpoint (the multi-task model, or each task's
fine-tuned or single-task model), its config from WORKDIR/config.json; each of its GLUE and
SuperGLUE tasks' TFDS test splits is predicted and written to DIR (default
WORKDIR/submission/<phase>), named by the records' idx:
  GLUE       <Task>.tsv: a header 'index<TAB>prediction', then one row per example; NLI
             tasks write label names, the other classifiers class ids, STS-B a score in
             [0, 5]. AX (the diagnostic set, 'glue_ax') is predicted by the MNLI head.
  SuperGLUE  <Task>.jsonl: {"idx": ..., "label": ...} per example; BoolQ and WiC write
             "true"/"false", CB and RTE label names, COPA the chosen alternative's index
             (0 or 1). MultiRC writes one line per paragraph,
             {"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a,
             "label": 0 or 1}, ...]}, ...]}}.
"""

import argparse
import collections
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from mtl_jax import config as config_lib
from mtl_jax import tasks as task_lib
from mtl_jax.data import tfds_source
from mtl_jax.data.features import Example, encode_examples
from mtl_jax.data.pipeline import default_data_dir, load_task_data, scaled_tasks
from mtl_jax.evaluation.evaluate import predictions
from mtl_jax.jobs import main as main_job
from mtl_jax.tasks import Task
from mtl_jax.tasks.glue import TFDS
from mtl_jax.train import loop
from mtl_jax.train.step import make_predict_step

Label = Callable[[Task, np.ndarray], object]  # (task, one prediction) -> what the file holds


def class_id(task: Task, pred) -> int:
  del task
  return int(pred)


def label_name(task: Task, pred) -> str:
  return task.label_names[int(pred)]


def lower_name(task: Task, pred) -> str:
  """'true'/'false', as SuperGLUE spells BoolQ's and WiC's labels."""
  return label_name(task, pred).lower()


def similarity(task: Task, pred) -> float:
  """STS-B's score, clipped to the range of its gold scores [0, 5]."""
  del task
  return round(float(np.clip(pred, 0.0, 5.0)), 3)


def write_tsv(path: str, idx: Sequence[int], labels: Sequence) -> None:
  """GLUE's layout: a header, then 'index<TAB>prediction' per example."""
  with open(path, 'w') as f:
    f.write('index\tprediction\n')
    f.writelines(f'{i}\t{label}\n' for i, label in zip(idx, labels))


def write_jsonl(path: str, idx: Sequence[int], labels: Sequence) -> None:
  """SuperGLUE's layout: {"idx": ..., "label": ...} per example."""
  with open(path, 'w') as f:
    f.writelines(json.dumps({'idx': i, 'label': label}) + '\n' for i, label in zip(idx, labels))


def multirc_lines(idx: Sequence[dict], labels: Sequence) -> list[dict]:
  """One {"idx", "passage": {"questions": [{"idx", "answers": [{"idx", "label"}]}]}} per
  paragraph; paragraphs, questions and answers in order of first appearance."""
  tree = collections.defaultdict(lambda: collections.defaultdict(list))
  for i, label in zip(idx, labels):
    tree[i['paragraph']][i['question']].append({'idx': i['answer'], 'label': label})
  return [{'idx': p, 'passage': {'questions': [{'idx': q, 'answers': answers}
                                               for q, answers in questions.items()]}}
          for p, questions in tree.items()]


def write_multirc(path: str, idx: Sequence[dict], labels: Sequence) -> None:
  with open(path, 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in multirc_lines(idx, labels))


Writer = Callable[[str, Sequence, Sequence], None]  # (path, each row's idx, labels)


@dataclasses.dataclass(frozen=True)
class Submission:
  """How a task's test predictions are written.

  Attributes:
    files: one file name per test split, in TfdsData.test order.
    label: what one prediction becomes.
    write: the file's layout.
    head: the task whose head predicts it, when it has none of its own (AX: MNLI's).
  """
  files: tuple[str, ...]
  label: Label
  write: Writer
  head: str | None = None


SUBMISSIONS: dict[str, Submission] = {
    'glue_cola': Submission(('CoLA.tsv',), class_id, write_tsv),
    'glue_sst2': Submission(('SST-2.tsv',), class_id, write_tsv),
    'glue_mrpc': Submission(('MRPC.tsv',), class_id, write_tsv),
    'glue_qqp': Submission(('QQP.tsv',), class_id, write_tsv),
    'glue_stsb': Submission(('STS-B.tsv',), similarity, write_tsv),
    'glue_mnli': Submission(('MNLI-m.tsv', 'MNLI-mm.tsv'), label_name, write_tsv),
    'glue_qnli': Submission(('QNLI.tsv',), label_name, write_tsv),
    'glue_rte': Submission(('RTE.tsv',), label_name, write_tsv),
    'glue_wnli': Submission(('WNLI.tsv',), class_id, write_tsv),
    'glue_ax': Submission(('AX.tsv',), label_name, write_tsv, head='glue_mnli'),
    'superglue_boolq': Submission(('BoolQ.jsonl',), lower_name, write_jsonl),
    'superglue_cb': Submission(('CB.jsonl',), label_name, write_jsonl),
    'superglue_rte': Submission(('RTE.jsonl',), label_name, write_jsonl),
    'superglue_wic': Submission(('WiC.jsonl',), lower_name, write_jsonl),
    'superglue_copa': Submission(('COPA.jsonl',), class_id, write_jsonl),  # 0 or 1: the choice
    'superglue_multirc': Submission(('MultiRC.jsonl',), class_id, write_multirc),
}


def head_of(name: str) -> str:
  """The task whose head predicts task `name`."""
  return SUBMISSIONS[name].head or name


def submitted_tasks(run_tasks: Sequence[Task], requested: Sequence[str] = ()) -> list[Task]:
  """The tasks to write: `requested`, or by default every one with a leaderboard file that
  the run's heads predict (its GLUE and SuperGLUE tasks, and AX when it has MNLI).
  ValueError naming a requested task the run cannot predict, or when there is none."""
  names = [t.name for t in run_tasks]
  for name in requested:
    if name not in SUBMISSIONS:
      raise ValueError(f'Task {name!r} has no leaderboard file; those that do: '
                       f'{", ".join(SUBMISSIONS)}.')
    if head_of(name) not in names:
      via = f'the head of {head_of(name)!r}, ' if head_of(name) != name else ''
      raise ValueError(f'Task {name!r} is predicted by {via}which the run does not train '
                       f'(its tasks: {", ".join(names)}).')
  chosen = list(requested) or [n for n in SUBMISSIONS if head_of(n) in names]
  if not chosen:
    raise ValueError(f'None of the run\'s tasks ({", ".join(names)}) has a GLUE or SuperGLUE '
                     f'test split to submit; those that do: {", ".join(SUBMISSIONS)}.')
  return [task_lib.get(n) for n in chosen]


def write_file(path: str, task: Task, examples: Sequence[Example], preds: np.ndarray) -> None:
  """The leaderboard file of one test split: `preds` row by row, named by the examples' idx."""
  submission = SUBMISSIONS[task.name]
  submission.write(path, [ex.idx for ex in examples],
                   [submission.label(task, p) for p in preds])


def _tuples(value):
  """JSON's lists back to the tuples a config holds."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to workdir/config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} holds no run.')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def check_phase(config: ml_collections.ConfigDict, phase: str, workdir: str):
  ran = {'multi': config.mode in ('multi', 'both'),
         'single': config.mode in ('single', 'both'),
         'finetune': config.mode in ('multi', 'both') and config.finetune.num_steps > 0}
  if phase not in ran:
    raise ValueError(f'phase {phase!r} is not one of {main_job.PHASES}.')
  if not ran[phase]:
    raise ValueError(f'The run in {workdir} has no {phase!r} phase (config.mode='
                     f'{config.mode!r}, config.finetune.num_steps={config.finetune.num_steps}).')


def submit(workdir: str, phase: str = 'multi', out: str | None = None,
           tasks: Sequence[str] = ()) -> list[str]:
  """Writes the leaderboard files of the run in `workdir` (see the module docstring) from
  the models of `phase`, for `tasks` (default: all it can); returns their paths."""
  config = config_lib.resolved(run_config(workdir))
  check_phase(config, phase, workdir)
  run_tasks = config_lib.validate(config)
  targets = submitted_tasks(run_tasks, tasks)
  data = load_task_data(config.data, run_tasks)  # the run's tokenizer and vocabulary
  out = out or os.path.join(workdir, 'submission', phase)
  os.makedirs(out, exist_ok=True)
  heads_used = {head_of(t.name) for t in targets}
  fits = [None] if phase == 'multi' else [t for t in run_tasks if t.name in heads_used]
  written = []
  for task in fits:
    fit_config, fit_tasks, fit_data, fit_dir, method = main_job.fit_args(
        config, run_tasks, data, workdir, phase, task)
    model, params = loop.trained_params(fit_config, fit_tasks, fit_data, fit_dir, method)
    predict_step = jax.jit(make_predict_step(model, scaled_tasks(fit_tasks, fit_data)))
    heads = {t.name: t for t in fit_tasks}
    for target in (t for t in targets if head_of(t.name) in heads):
      head = heads[head_of(target.name)]
      for split, name in zip(TFDS[target.name].test, SUBMISSIONS[target.name].files):
        examples = list(tfds_source.split_examples(target, split, config.data.data_dir
                                                   or default_data_dir(), config.data.download))
        # Encoded for all the fit's tasks, as its validation tables were (a run with a
        # multiple-choice task holds C inputs per row).
        table = encode_examples(examples, fit_tasks, data.tokenizer, config.data.seq_len,
                                f'{target.source} {split} split')
        preds = predictions(predict_step, params, head, table, config.eval_batch_size)['pred']
        written.append(os.path.join(out, name))
        write_file(written[-1], target, examples, preds)
  return written


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir')
  parser.add_argument('--phase', default='multi', choices=main_job.PHASES,
                      help='whose parameters predict: the multi-task model (default), each '
                           'task\'s fine-tuned model, or each single-task baseline')
  parser.add_argument('--out', help='where the files go (default WORKDIR/submission/PHASE)')
  parser.add_argument('--tasks', nargs='+', default=(), metavar='TASK',
                      help='only these tasks (e.g. glue_ax); default: all the run can predict')
  args = parser.parse_args(argv)
  for path in submit(args.workdir, args.phase, args.out, args.tasks):
    print(f'wrote {path}')


if __name__ == '__main__':
  main()
