"""The built-in suite as a TFDS dataset: generated once, stored as array_record, read back
through `tfds.data_source` and grain, like any other TFDS dataset.

The suite's parameters (sizes, relatedness, seed, version) form the builder config, so each
distinct setting is prepared once under data_dir and reused.
"""

import dataclasses
import os
import zlib

import grain
import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import builtin_suite as suite
from mtl_jax.data.features import Example, as_text
from mtl_jax.data.tokenizer import learn_vocabulary, write_vocabulary

SPLITS = ('train', 'validation', 'test')
_INT_LABELS = ('sentiment', 'topic', 'conflict', 'entailment')
_TAG_LABELS = ('pos', 'chunk')


@dataclasses.dataclass
class SuiteConfig(tfds.core.BuilderConfig):
  train_size: int = 2000  # examples per task in the train split
  eval_size: int = 500  # examples per task in the validation and test splits
  relatedness: float = 0.5
  seed: int = 0
  suite_version: int = 1  # builtin_suite.SUITE_VERSIONS (BuilderConfig has its own `version`)


class MtlBuiltin(tfds.core.GeneratorBasedBuilder):
  """Seven labelled tasks over generated English-like sentences (docs/builtin_suite.md)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = {
        'task': tfds.features.Text(),
        'words_a': tfds.features.Sequence(tfds.features.Text()),
        'words_b': tfds.features.Sequence(tfds.features.Text()),
        'similarity': np.float32,
        **{name: tfds.features.Sequence(np.int32) for name in _TAG_LABELS},
        **{name: np.int32 for name in _INT_LABELS},
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description=self.__doc__)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    sizes = {'train': cfg.train_size, 'validation': cfg.eval_size, 'test': cfg.eval_size}
    return {split: self._generate_examples(split, sizes[split]) for split in SPLITS}

  def _generate_examples(self, split, size):
    cfg = self.builder_config
    for task in suite.TASKS:
      seed = zlib.crc32(f'{cfg.seed}/{split}/{task}'.encode())
      examples = suite.generate_examples(task, size, seed, cfg.relatedness, cfg.suite_version)
      for i, ex in enumerate(examples):
        yield f'{task}-{i}', ex


def suite_config(train_size: int, eval_size: int, relatedness: float, seed: int,
                 suite_version: int = 1) -> SuiteConfig:
  name = f'n{train_size}-{eval_size}_r{relatedness:g}_s{seed}'
  if suite_version != 1:  # version 1 keeps its first name, so prepared data stays valid
    name += f'_v{suite_version}'
  return SuiteConfig(name=name, train_size=train_size, eval_size=eval_size,
                     relatedness=relatedness, seed=seed, suite_version=suite_version)


def data_sources(cfg: SuiteConfig, data_dir: str) -> dict:
  """split -> random-access source; prepares the dataset on first use (no download)."""
  tfds.disable_progress_bar()
  return tfds.data_source('mtl_builtin', data_dir=data_dir, download=True,
                          builder_kwargs={'config': cfg, 'file_format': 'array_record'})


def to_example(record: dict) -> tuple[str, Example]:
  """A stored record -> (home task, Example); -1 / empty labels become None."""
  words_a = [as_text(w) for w in record['words_a']]
  words_b = [as_text(w) for w in record['words_b']]
  labels = {name: [int(t) for t in record[name]] or None for name in _TAG_LABELS}
  labels.update({name: int(record[name]) if record[name] >= 0 else None
                 for name in _INT_LABELS})
  labels['similarity'] = float(record['similarity']) if record['similarity'] >= 0 else None
  inputs = (words_a, words_b) if words_b else (words_a,)
  return as_text(record['task']), Example(inputs, labels)


def load_split(source) -> dict[str, list[Example]]:
  """All examples of one split, grouped by home task, in stored order."""
  grouped = {task: [] for task in suite.TASKS}
  for task, example in grain.MapDataset.source(source).map(to_example):
    grouped[task].append(example)
  return grouped


def vocabulary(cfg: SuiteConfig, data_dir: str, vocab_size: int) -> str:
  """The suite's own WordPiece vocab.txt, learnt from its train split on first use."""
  path = os.path.join(data_dir, 'mtl_builtin_vocab', f'{cfg.name}_v{vocab_size}.txt')
  if not os.path.exists(path):
    train = load_split(data_sources(cfg, data_dir)['train'])
    words = (w for examples in train.values() for ex in examples for text in ex.inputs
             for w in text)
    write_vocabulary(learn_vocabulary(words, vocab_size), path)
  return path
