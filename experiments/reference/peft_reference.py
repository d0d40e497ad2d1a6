"""PEFT's logits for the LoRA adapters that mtl_jax writes in PEFT's format
(tests/peft_adapters.py wrote tests/data/tiny_llama_peft/<case>/ over tests/data/tiny_llama),
for tests/test_adapters.py: PEFT must load them and compute what mtl_jax computes.

Run with a Python that has torch, transformers and peft (the side environment of
llama_parity_reference.py, plus `~/torch-peer/bin/pip install peft==0.22.0`; the project
never imports torch):

    ~/torch-peer/bin/python experiments/reference/peft_reference.py

It writes tests/data/tiny_llama_peft_reference.npz: for each case folder, `<case>` the
logits (3, 12, 96) float32 of PeftModel.from_pretrained(tiny_llama, folder) on the inputs of
tests/data/tiny_llama_reference.npz (input_ids, attention_mask, position_ids), every
position; compare where attention_mask is 1.
"""

import os

import numpy as np
import peft
import torch
import transformers

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tests', 'data')


def main():
  inputs = np.load(os.path.join(DATA, 'tiny_llama_reference.npz'))
  folder = os.path.join(DATA, 'tiny_llama_peft')
  out = {}
  for case in sorted(os.listdir(folder)):
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(DATA, 'tiny_llama'), torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, os.path.join(folder, case)).eval()
    with torch.no_grad():
      logits = model(input_ids=torch.as_tensor(inputs['input_ids']),
                     attention_mask=torch.as_tensor(inputs['attention_mask']),
                     position_ids=torch.as_tensor(inputs['position_ids'])).logits
    out[case] = logits.numpy().astype(np.float32)
    print(case, out[case].shape, f'peft {peft.__version__}')
  np.savez(os.path.join(DATA, 'tiny_llama_peft_reference.npz'), **out)


if __name__ == '__main__':
  main()
