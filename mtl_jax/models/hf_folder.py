"""What every Hugging Face model folder has, for the encoder's (models/pretrained.py) and the
decoder's (models/llama_checkpoint.py) readers: its file names, its config.json, and the
error a checkpoint that cannot be read raises."""

import json
import os

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'


class CheckpointError(ValueError):
  """A pretrained checkpoint cannot be read or does not fit; the message names the file and
  the tensor or field."""


def read_config(folder: str) -> dict:
  """The checkpoint's config.json as a dict."""
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found; a pretrained folder holds {CONFIG_FILE} and '
                          f'{WEIGHTS_FILE} (Hugging Face layout).')
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise CheckpointError(f'{path}: not valid JSON: {e}') from e


def require_empty(folder: str):
  """CheckpointError unless `folder` is absent or an empty folder: a writer never overwrites."""
  if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
    raise CheckpointError(f'{folder}: exists and is not an empty folder; not overwritten.')
