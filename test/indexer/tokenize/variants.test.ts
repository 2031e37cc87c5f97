import t from 'tap';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from 'tokenizers';
import { addedTokenSplitter, PromptTokenizer, type AddedTokenSpec } from '../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { chatCases, completionCases } from '../../fixtures/tokenizer/corpus.js';

/**
 * The Qwen3 tokenizer with the awkward features Qwen3 lacks: a post-processor
 * that adds BOS, and added tokens that strip whitespace, are normalised, or
 * match single words only. The cached path must still equal the native encode.
 */
function writeVariant(dir: string): void {
  const json = JSON.parse(readFileSync(join(QWEN3_TOKENIZER_DIR, 'tokenizer.json'), 'utf8')) as {
    added_tokens: AddedTokenSpec[];
    post_processor: unknown;
  };
  for (const token of json.added_tokens) {
    if (token.content === '<think>') Object.assign(token, { lstrip: true, rstrip: true });
    if (token.content === '</think>') token.normalized = true;
    if (token.content === '<tool_call>') token.single_word = true;
  }
  json.post_processor = {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [151643], tokens: ['<|endoftext|>'] } },
  };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
  copyFileSync(join(QWEN3_TOKENIZER_DIR, 'tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
}

t.test('unsafe added tokens are not split points, and the corpus stays exact', async (t) => {
  const dir = t.testdir({});
  writeVariant(dir);
  const native = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
  const tok = await PromptTokenizer.load(dir);
  for (const unsafe of ['<think>', '</think>', '<tool_call>'])
    t.notOk(tok.splitTokens.includes(unsafe), `${unsafe} excluded`);
  t.ok(tok.splitTokens.includes('<|im_start|>'));

  for (const pass of ['cold', 'warm']) {
    for (const c of chatCases) {
      const b = c.body;
      const options = {
        tools: b.tools as unknown[] | undefined,
        templateKwargs: b.chat_template_kwargs as Record<string, unknown> | undefined,
        addGenerationPrompt: (b.add_generation_prompt as boolean | undefined) ?? true,
        continueFinalMessage: b.continue_final_message === true,
      };
      const text = tok.renderChat(b.messages as unknown[], options);
      const expected = (await native.encode(text, null, { addSpecialTokens: false })).getIds();
      t.same(await tok.tokenizeChat(b.messages as unknown[], options), expected, `${pass}: ${c.name}`);
    }
  }
  const tricky = 'a   <think>  b</think>x <tool_call>y<tool_call> z word<tool_call>';
  t.same(
    await tok.encodeCached(tricky),
    (await native.encode(tricky, null, { addSpecialTokens: false })).getIds(),
    'stripping tokens next to split tokens',
  );
});

t.test('a BOS-adding post-processor is reproduced around cached segments', async (t) => {
  const dir = t.testdir({});
  writeVariant(dir);
  const native = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
  const tok = await PromptTokenizer.load(dir);
  for (const c of completionCases) {
    const prompt = c.body.prompt;
    const text = Array.isArray(prompt) ? (prompt[0] as string) : (prompt as string);
    const expected = (await native.encode(text, null, { addSpecialTokens: true })).getIds();
    t.equal(expected[0], 151643, 'the variant adds BOS');
    t.same(await tok.tokenizeCompletion(text), expected, c.name);
    t.same(await tok.tokenizeCompletion(text), expected, `${c.name} (warm)`);
  }
});

t.test('why the exclusions matter: splitting at a stripping token would be wrong', async (t) => {
  const dir = t.testdir({});
  writeVariant(dir);
  const native = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
  const text = 'word   <think>   next';
  const whole = (await native.encode(text, null, { addSpecialTokens: false })).getIds();
  // A naive splitter that treats <think> as a plain boundary.
  const naive = addedTokenSplitter([{ id: 151667, content: '<think>', normalized: false }]);
  const naiveIds: number[] = [];
  for (const piece of naive.split(text)) {
    if (typeof piece === 'number') naiveIds.push(piece);
    else naiveIds.push(...(await native.encode(piece, null, { addSpecialTokens: false })).getIds());
  }
  t.notSame(naiveIds, whole, 'lstrip/rstrip eat the spaces only when the native encoder sees the token in context');
});

t.test('splitter selection rules', async (t) => {
  const spec = (id: number, content: string, extra: Partial<AddedTokenSpec> = {}): AddedTokenSpec => ({
    id,
    content,
    normalized: false,
    ...extra,
  });
  const s = addedTokenSplitter([
    spec(1, '<a>'),
    spec(2, '<ab>'),
    spec(3, '<n>', { normalized: true }),
    spec(4, '<n>x'),
    spec(5, '<s>', { lstrip: true }),
    spec(6, ' <sp>'),
    spec(7, '<w>', { single_word: true }),
  ]);
  t.same(
    [...s.tokens].sort(),
    ['<a>', '<ab>'],
    'normalized, stripping, single-word, overlapping and space-edged tokens are dropped',
  );
  t.same(s.split('x<ab>y<a><a>'), ['x', 2, 'y', 1, 1], 'longest match first, empty pieces dropped');
  const none = addedTokenSplitter([]);
  t.same(none.split(''), []);
  t.same(none.split('abc'), ['abc']);
});
