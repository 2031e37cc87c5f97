import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { boundIds, boundText, ContextLengthError, tokenLengths } from '../../../indexer/tokenize/context-bound.js';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

const lengths = { maxCharsPerToken: 10, modelMaxLength: undefined };
/** A counter standing in for the tokenizer: one token per `per` characters; records what it was asked. */
const counter = (per: number) => {
  const asked: number[] = [];
  return { asked, count: (s: string) => (asked.push(s.length), Promise.resolve(Math.ceil(s.length / per))) };
};

t.test('short texts are left to the whole tokenization', async (t) => {
  const c = counter(4);
  await boundText('x'.repeat(400), 100, lengths, c.count);
  t.same(c.asked, [], 'no probe');
});

t.test('longer than any tokenization of limit tokens: refused without counting', async (t) => {
  const c = counter(4);
  await t.rejects(
    boundText('x'.repeat(1001), 100, lengths, c.count),
    new ContextLengthError(100, 1001, 'characters', false),
  );
  t.same(c.asked, []);
});

t.test('in between: growing prefixes, cut before whitespace, until one is past the limit', async (t) => {
  const text = 'abcdefgh '.repeat(100); // 900 characters
  const dense = counter(2); // 450 tokens: the first 400-character prefix is past 100 already
  t.match(await boundText(text, 100, lengths, dense.count).catch((e: unknown) => e), {
    name: 'ContextLengthError',
    count: 198,
    unit: 'tokens',
    atLeast: true,
  });
  t.equal(dense.asked.length, 1);
  t.ok(dense.asked[0]! <= 400 && text[dense.asked[0]!] === ' ', 'cut before a space');
  const sparse = counter(8); // 113 tokens in all, but each prefix stays under 102: the text goes on to be tokenized whole
  await boundText(text, 100, lengths, sparse.count);
  t.same(sparse.asked.length, 2, 'prefixes of 400 and 800 characters; 1600 would be the whole text: no more probes');
});

t.test('token ids: refused from the limit on (no room for an output token)', async (t) => {
  t.doesNotThrow(() => boundIds(new Array(99).fill(1), 100));
  t.throws(() => boundIds(new Array(100).fill(1), 100), new ContextLengthError(100, 100, 'tokens', false));
});

t.test("the Qwen3 tokenizer's bounds, and prefix counts that agree with the whole", async (t) => {
  const json: unknown = JSON.parse(readFileSync(join(QWEN3_TOKENIZER_DIR, 'tokenizer.json'), 'utf8'));
  const l = await tokenLengths(QWEN3_TOKENIZER_DIR, json);
  t.equal(l.maxCharsPerToken, 128, 'its longest piece: 128 spaces');
  t.equal(l.modelMaxLength, 131072);
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  t.same(tok.lengths, l);
  const text = 'The quick brown fox jumps over the lazy dog; ünïcödé 漢字 🙂 and   spaces.\n'.repeat(40);
  t.equal(await tok.countTokens(text), (await tok.encode(text, false)).length);
});
