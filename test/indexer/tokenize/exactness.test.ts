import t from 'tap';
import { join } from 'node:path';
import { Tokenizer } from 'tokenizers';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { localTokenSource } from '../../../indexer/tokenize/prompt-tokens.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { chatCases, completionCases, type CorpusCase } from '../../fixtures/tokenizer/corpus.js';

// The reference: the native binding on the whole rendered text, nothing of ours in between.
const reference = Tokenizer.fromFile(join(QWEN3_TOKENIZER_DIR, 'tokenizer.json'));
const referenceIds = async (text: string, addSpecialTokens: boolean) =>
  (await reference.encode(text, null, { addSpecialTokens })).getIds();

async function expectedChat(tok: PromptTokenizer, c: CorpusCase): Promise<number[]> {
  const b = c.body;
  const text = tok.renderChat(b.messages as unknown[], {
    tools: b.tools as unknown[] | undefined,
    templateKwargs: b.chat_template_kwargs as Record<string, unknown> | undefined,
    addGenerationPrompt: (b.add_generation_prompt as boolean | undefined) ?? true,
    continueFinalMessage: b.continue_final_message === true,
  });
  return referenceIds(text, false);
}

t.test('corpus has at least 30 chat cases', async (t) => {
  t.ok(chatCases.length >= 30, `${chatCases.length} cases`);
});

t.test('every Qwen3 added token is a safe split point', async (t) => {
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  t.equal(tok.splitTokens.length, 26, 'all 26 added tokens: normalized false, no lstrip/rstrip/single_word');
  t.ok(tok.splitTokens.includes('<|im_start|>') && tok.splitTokens.includes('<think>'));
});

t.test('chat: cached path equals a whole-text encode, cold, warm and in reverse order', async (t) => {
  const forward = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const source = localTokenSource(forward);
  const expected = new Map<string, number[]>();
  for (const c of chatCases) expected.set(c.name, await expectedChat(forward, c));

  for (const c of chatCases) t.same(await source.tokenize(c.body, 'chat'), expected.get(c.name), `cold: ${c.name}`);
  const afterCold = forward.stats();
  t.ok(afterCold.segmentHits > 0, 'later cases reuse segments of earlier ones');
  for (const c of chatCases) t.same(await source.tokenize(c.body, 'chat'), expected.get(c.name), `warm: ${c.name}`);
  const afterWarm = forward.stats();
  t.equal(afterWarm.segmentMisses, afterCold.segmentMisses, 'the warm pass is served wholly from cache');

  const reverse = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const reverseSource = localTokenSource(reverse);
  for (const c of [...chatCases].reverse())
    t.same(await reverseSource.tokenize(c.body, 'chat'), expected.get(c.name), `reverse: ${c.name}`);

  // All at once: concurrent requests share segments that are still being encoded.
  const concurrent = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const concurrentSource = localTokenSource(concurrent);
  const all = await Promise.all(chatCases.map((c) => concurrentSource.tokenize(c.body, 'chat')));
  chatCases.forEach((c, i) => t.same(all[i], expected.get(c.name), `concurrent: ${c.name}`));
});

t.test('a new turn costs only its own segments', async (t) => {
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const long = chatCases.find((c) => c.name === 'long multi-turn')!.body;
  const messages = long.messages as unknown[];
  await tok.tokenizeChat(messages.slice(0, -1));
  const before = tok.stats();
  const ids = await tok.tokenizeChat(messages);
  const after = tok.stats();
  t.same(ids, await referenceIds(tok.renderChat(messages), false));
  // The added turn brings "assistant\n<text>" and the closing "\n" is cached, but the
  // previous tail segment changed ("assistant\n" generation prompt became a turn).
  t.ok(
    after.segmentMisses - before.segmentMisses <= 2,
    `misses for the new turn: ${after.segmentMisses - before.segmentMisses}`,
  );
});

t.test('completion: with special tokens, equal to the native encode', async (t) => {
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const source = localTokenSource(tok);
  for (const c of completionCases) {
    const prompt = c.body.prompt;
    const text = Array.isArray(prompt) ? (prompt[0] as string) : (prompt as string);
    const expected = await referenceIds(text, true);
    t.same(await source.tokenize(c.body, 'completion'), expected, `cold: ${c.name}`);
    t.same(await source.tokenize(c.body, 'completion'), expected, `warm: ${c.name}`);
  }
  const literal = await source.tokenize({ prompt: '<|im_start|>x' }, 'completion');
  t.equal(literal![0], 151644, 'a special-token string in a completion prompt is the special token');
  t.same(
    await source.tokenize({ prompt: 'hi there', add_special_tokens: false }, 'completion'),
    await referenceIds('hi there', false),
  );
});

t.test('token-id prompts pass through; batches and junk give undefined', async (t) => {
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const source = localTokenSource(tok);
  t.same(await source.tokenize({ prompt: [1, 2, 3, 151644] }, 'completion'), [1, 2, 3, 151644]);
  t.same(await source.tokenize({ prompt: [[9, 8, 7]] }, 'completion'), [9, 8, 7]);
  t.same(
    await source.tokenize({ prompt: [5, 6, 7, 8], truncate_prompt_tokens: 2 }, 'completion'),
    [7, 8],
    'truncate_prompt_tokens keeps the tail',
  );
  t.equal(await source.tokenize({ prompt: ['a', 'b'] }, 'completion'), undefined, 'batch of strings');
  t.equal(await source.tokenize({ prompt: [[1], [2]] }, 'completion'), undefined, 'batch of token lists');
  t.equal(await source.tokenize({ prompt: [1, -2] }, 'completion'), undefined, 'negative id');
  t.equal(await source.tokenize({ prompt: [] }, 'completion'), undefined, 'empty list');
  t.equal(await source.tokenize({}, 'completion'), undefined, 'no prompt');
  t.equal(await source.tokenize({ messages: [] }, 'chat'), undefined, 'no messages');
  t.equal(
    await source.tokenize({ messages: [{ role: 'user', content: 'x' }], chat_template: '{{ 1 }}' }, 'chat'),
    undefined,
    'per-request template',
  );
});

t.test(
  'prefix memo: every case grown turn by turn behind a long system prompt equals a whole-text encode',
  async (t) => {
    const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
    const source = localTokenSource(tok);
    const long = `You are a careful assistant. ${'Cache the prefix, route to the worker that holds it. '.repeat(80)}`;
    let turns = 0;
    for (const c of chatCases) {
      const messages = c.body.messages as { role: string; content?: unknown }[];
      const first = messages[0]!;
      const grown =
        first.role === 'system' && typeof first.content === 'string'
          ? [{ ...first, content: long + first.content }, ...messages.slice(1)]
          : [{ role: 'system', content: long }, ...messages];
      for (let k = 1; k <= grown.length; k++) {
        const body = { ...c.body, messages: grown.slice(0, k) };
        let expected: number[];
        try {
          expected = await expectedChat(tok, { name: c.name, body });
        } catch {
          continue; // a slice the template refuses (a tool result without its call): not a prompt anyone sends
        }
        t.same(await source.tokenize(body, 'chat'), expected, `${c.name}, first ${k} messages`);
        turns++;
      }
    }
    const stats = tok.stats();
    t.ok(turns > chatCases.length, `${turns} turns`);
    t.ok(stats.prefixHits > chatCases.length, `later turns start from the memo: ${stats.prefixHits} hits`);
  },
);
