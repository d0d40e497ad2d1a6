"""Instruction templates and chat rendering (mtl_jax/data/instructions.py): what a template
writes for each task kind, the seeded choice of template, refusals naming the task and
template, and the prompt / completion ids against hand-written ChatML."""

import collections
import json
import os

import pytest
from test_llm_tokenizer import write_gguf

from mtl_jax.data import llm_tokenizer
from mtl_jax.data.features import Example
from mtl_jax.data.instructions import (Template, as_conversation, check_templates,
                                       default_templates, fields, template_index, tokenize)
from mtl_jax.data.text_sources import Conversation
from mtl_jax.models import llama_checkpoint
from mtl_jax.tasks.spec import Task, TaskKind

SENTIMENT = Task('sentiment', TaskKind.CLASSIFICATION, 2, ('words_a',), 'sentiment',
                 ('accuracy',), 'builtin', label_names=('negative', 'positive'))
NLI = Task('glue_rte', TaskKind.CLASSIFICATION, 2, ('premise', 'hypothesis'), 'label',
           ('accuracy',), 'glue/rte', label_names=('entailment', 'not_entailment', 'other'))
STS = Task('glue_stsb', TaskKind.REGRESSION, 1, ('sentence1', 'sentence2'), 'label',
           ('pearson',), 'glue/stsb')
POS = Task('pos', TaskKind.TAGGING, 3, ('words_a',), 'pos', ('token_accuracy',), 'builtin',
           label_names=('DET', 'NOUN', 'VERB'))
COPA = Task('superglue_copa', TaskKind.MULTIPLE_CHOICE, 2, ('premise', 'question'), 'label',
            ('accuracy',), 'super_glue/copa')


@pytest.fixture(scope='module')
def chatml(tmp_path_factory):
  return llm_tokenizer.from_gguf(write_gguf(tmp_path_factory.mktemp('t') / 'tiny.gguf'))


def test_each_kind_s_fields_and_answer():
  good = Example((['the', 'film', 'was', 'good'],), {'sentiment': 1})
  assert fields(SENTIMENT, good) == {
      'words_a': 'the film was good', 'text': 'the film was good',
      'first': 'the film was good', 'answer': 'positive', 'task': 'sentiment',
      'options': '- negative\n- positive', 'options_inline': 'negative or positive'}
  pair = fields(NLI, Example(('A man sleeps.', 'A person rests.'), {'glue_rte': 0}))
  assert (pair['premise'], pair['second'], pair['answer'], pair['options_inline']) == (
      'A man sleeps.', 'A person rests.', 'entailment', 'entailment, not_entailment or other')
  assert fields(STS, Example(('a', 'b'), {'glue_stsb': 3.8})) ['answer'] == '3.80'
  assert fields(POS, Example((['the', 'dog', 'runs'],), {'pos': [0, 1, 2]}))['answer'] == (
      'DET NOUN VERB')
  copa = Example((), {'superglue_copa': 1}, (('It rained.', 'What was the effect? Wet.'),
                                              ('It rained.', 'What was the effect? Dry.')))
  values = fields(COPA, copa)
  assert (values['text'], values['answer'], values['options']) == (
      'It rained.', 'What was the effect? Dry.',
      '- What was the effect? Wet.\n- What was the effect? Dry.')
  for task in (SENTIMENT, NLI, STS, POS, COPA):
    check_templates(task, default_templates(task))


def test_the_template_is_a_seeded_hash_of_the_example():
  picks = [template_index(0, 'sentiment', i, 3) for i in range(3000)]
  assert picks == [template_index(0, 'sentiment', i, 3) for i in range(3000)]
  assert picks != [template_index(1, 'sentiment', i, 3) for i in range(3000)]
  assert picks != [template_index(0, 'topic', i, 3) for i in range(3000)]
  counts = collections.Counter(picks)
  assert set(counts) == {0, 1, 2} and min(counts.values()) > 900  # about 1000 each
  conversation = as_conversation(SENTIMENT, Example((['so', 'bad'],), {'sentiment': 0}), 7, 0,
                                 default_templates(SENTIMENT), 'builtin train, row 7')
  template = default_templates(SENTIMENT)[template_index(0, 'sentiment', 7, 3)]
  values = {**fields(SENTIMENT, Example((['so', 'bad'],), {'sentiment': 0}))}
  assert conversation == Conversation('sentiment', (
      ('user', template.prompt.format(**values)), ('assistant', 'negative')),
      'builtin train, row 7')


def test_templates_with_unknown_fields_are_refused_naming_task_and_template():
  with pytest.raises(ValueError, match=r"task 'sentiment', template 1 \('Rate: \{review\}'"
                     r".*refers to \['review'\], which its examples do not have"):
    check_templates(SENTIMENT, [Template('{text}'), Template('Rate: {review}')])
  with pytest.raises(ValueError, match=r"task 'sentiment', template 0: the completion is "
                     r'empty'):
    check_templates(SENTIMENT, [Template('{text}', ' ')])
  with pytest.raises(ValueError, match=r"task 'sentiment': no instruction templates"):
    check_templates(SENTIMENT, [])
  with pytest.raises(ValueError, match=r"refers to \['second'\]"):  # a single-text task
    check_templates(SENTIMENT, [Template('{first} {second}')])


def test_prompt_and_completion_ids_follow_the_chat_template(chatml):
  conversation = Conversation('sentiment', (('system', 'Be brief.'), ('user', 'hello world'),
                                            ('assistant', 'hello')), 'x.jsonl:3')
  example = tokenize(chatml, conversation, {'sentiment': 4})
  prompt = ('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world'
            '<|im_end|>\n<|im_start|>assistant\n')
  assert example.task == 4
  assert list(example.prompt) == chatml.encode(prompt, add_special_tokens=False)
  # The reply and its end of turn, which is learnt; not the newline the template adds after.
  assert list(example.completion) == chatml.encode('hello<|im_end|>', add_special_tokens=False)
  assert example.completion[-1] == chatml.end_of_turn_id


def test_a_chat_template_that_renders_the_reply_elsewhere_is_refused(tmp_path):
  odd = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
         "'<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>bot\n' }}"
         '{% endif %}')
  tokenizer = llm_tokenizer.from_gguf(write_gguf(tmp_path / 'odd.gguf', template=odd))
  conversation = Conversation('t', (('user', 'hi'), ('assistant', 'hello')), 'x.jsonl:9')
  with pytest.raises(ValueError, match=r'x.jsonl:9: the chat template of .*odd.gguf does not '
                     r'render the reply after the prompt'):
    tokenize(tokenizer, conversation, {'t': 0})
  plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  tokenizer = llm_tokenizer.from_gguf(write_gguf(tmp_path / 'plain.gguf', template=plain))
  with pytest.raises(ValueError, match=r'x.jsonl:9: .* ends the reply with no end-of-turn'):
    tokenize(tokenizer, conversation, {'t': 0})


def test_smollm2_prompt_and_completion_ids_equal_transformers():
  """transformers' apply_chat_template over SmolLM2's GGUF (experiments/reference/
  instruction_reference.py): the prompt with the generation prompt, and the whole chat."""
  with open(os.path.join(os.path.dirname(__file__), 'data', 'instruction_reference.json'),
            encoding='utf-8') as f:
    cases = json.load(f)['cases']
  tokenizer = llm_tokenizer.from_gguf(llama_checkpoint.smollm2_gguf())
  for case in cases:
    messages = tuple((m['role'], m['content']) for m in case['messages'])
    example = tokenize(tokenizer, Conversation('t', messages, 'reference'), {'t': 0})
    assert list(example.prompt) == case['prompt_ids']
    whole = case['full_ids']
    # transformers' whole chat is the prompt, the reply, <|im_end|> and a newline.
    assert list(example.prompt + example.completion) == whole[:-1]
    assert tokenizer.decode(whole[-2:]) == '<|im_end|>\n'
