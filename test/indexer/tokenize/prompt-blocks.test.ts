import t from 'tap';
import { createBlockHasher } from '../../../indexer/index/block-hash.js';
import {
  createPromptBlocksProvider,
  localTokenSource,
  type PromptTokenSource,
} from '../../../indexer/tokenize/prompt-tokens.js';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { longText } from '../../fixtures/tokenizer/corpus.js';

const MODEL = 'Qwen/Qwen3-0.6B';

t.test('prompt blocks: full blocks only, shared prefixes share leading hashes, LoRA changes them', async (t) => {
  const tokenizer = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const hasher = await createBlockHasher();
  const observed: number[] = [];
  const provider = createPromptBlocksProvider({
    source: localTokenSource(tokenizer),
    hasher,
    blockSize: 16,
    seedFor: (lora) => hasher.seedFor(MODEL, lora),
    loraOf: (model) => (model === 'my-adapter' ? 'my-adapter' : null),
    observe: (_seconds, tokens) => observed.push(tokens),
  });
  const history = [
    { role: 'system', content: 'You are helpful.' },
    { role: 'user', content: longText(3000, 5) },
    { role: 'assistant', content: longText(1000, 6) },
  ];
  const first = await provider(
    { model: MODEL, messages: [...history, { role: 'user', content: 'first follow-up' }] },
    MODEL,
    'chat',
  );
  const second = await provider(
    {
      model: MODEL,
      messages: [
        ...history,
        {
          role: 'user',
          content:
            'a different follow-up question, long enough to fill at least two more blocks of sixteen tokens each, so the tails differ in full blocks',
        },
      ],
    },
    MODEL,
    'chat',
  );
  t.ok(first && second);
  t.equal(first!.blockSize, 16);
  t.equal(first!.hashes.length, Math.floor(first!.tokenCount / 16), 'only full blocks are hashed');
  t.ok(first!.tokenCount % 16 !== 0 || first!.hashes.length > 0);
  const historyIds = await tokenizer.tokenizeChat(history, { addGenerationPrompt: false });
  const sharedBlocks = Math.floor(historyIds.length / 16);
  t.ok(sharedBlocks > 50, `${sharedBlocks} shared blocks`);
  t.same(
    first!.hashes.slice(0, sharedBlocks),
    second!.hashes.slice(0, sharedBlocks),
    'same prefix -> same leading hashes',
  );
  t.ok(second!.hashes.length > sharedBlocks + 1, 'the second prompt has blocks beyond the shared prefix');
  t.not(second!.hashes[sharedBlocks + 1], first!.hashes[sharedBlocks + 1], 'different tails -> different hashes');
  t.same(observed, [first!.tokenCount, second!.tokenCount], 'observe gets every tokenization');

  const ids = await tokenizer.tokenizeChat([...history, { role: 'user', content: 'first follow-up' }]);
  t.same(
    first!.hashes,
    hasher.hashBlocks(ids, 16, hasher.seedFor(MODEL, null)),
    'hashes are the block hasher over the token ids, base-model seed',
  );

  const lora = await provider(
    { model: 'my-adapter', messages: [...history, { role: 'user', content: 'first follow-up' }] },
    'my-adapter',
    'chat',
  );
  t.equal(lora!.tokenCount, first!.tokenCount);
  t.notSame(lora!.hashes[0], first!.hashes[0], 'a LoRA adapter name gets its own seed');

  const inferred = await provider(
    { model: MODEL, messages: [...history, { role: 'user', content: 'first follow-up' }] },
    MODEL,
  );
  t.same(inferred, first, 'kind defaults from the body shape (messages -> chat)');
  const completion = await provider(
    { model: MODEL, prompt: Array.from({ length: 40 }, (_, i) => i) },
    MODEL,
    'completion',
  );
  t.same(completion, {
    tokenCount: 40,
    blockSize: 16,
    hashes: hasher.hashBlocks(
      Array.from({ length: 40 }, (_, i) => i),
      16,
      hasher.seedFor(MODEL, null),
    ),
  });
  t.equal(await provider({ model: MODEL, prompt: [[1], [2]] }, MODEL, 'completion'), undefined, 'batch -> undefined');
  t.equal(
    await provider(
      { model: MODEL, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] },
      MODEL,
      'chat',
    ),
    undefined,
    'media -> undefined',
  );
});

t.test('real failures reject (the pipeline routes without blocks and logs)', async (t) => {
  const hasher = await createBlockHasher();
  const failing: PromptTokenSource = { tokenize: () => Promise.reject(new Error('remote tokenize: timed out')) };
  const provider = createPromptBlocksProvider({ source: failing, hasher, blockSize: 16, seedFor: () => 1n });
  await t.rejects(provider({ messages: [] }, MODEL, 'chat'), /timed out/);
  t.throws(() => createPromptBlocksProvider({ source: failing, hasher, blockSize: 0, seedFor: () => 1n }), RangeError);
});

t.test('segment cache is bounded by bytes', async (t) => {
  const tokenizer = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR, { cacheBytes: 64 * 1024 });
  for (let i = 0; i < 40; i++) {
    await tokenizer.tokenizeChat([{ role: 'user', content: longText(2000, i + 1) }]);
    t.ok(tokenizer.stats().cacheBytes <= 64 * 1024, `after ${i + 1} inserts: ${tokenizer.stats().cacheBytes} bytes`);
  }
  const stats = tokenizer.stats();
  t.ok(stats.cacheEntries < 40 * 2, `evicted: ${stats.cacheEntries} entries left`);
  const huge = [{ role: 'user', content: longText(100_000, 3) }];
  t.same(
    await tokenizer.tokenizeChat(huge),
    await tokenizer.encode(tokenizer.renderChat(huge), false),
    'a segment larger than the whole cache is encoded, not cached',
  );
  t.ok(tokenizer.stats().cacheBytes <= 64 * 1024);
  // Evicted segments are re-encoded correctly.
  const again = await tokenizer.tokenizeChat([{ role: 'user', content: longText(2000, 1) }]);
  t.same(again, await tokenizer.encode(tokenizer.renderChat([{ role: 'user', content: longText(2000, 1) }]), false));
});

t.test('cache_salt and media parts: salted chains, hashing stops at the first media block', async (t) => {
  const tokenizer = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const hasher = await createBlockHasher();
  const [mediaStartId] = await tokenizer.encode('<|vision_start|>', false);
  const options = { source: localTokenSource(tokenizer), hasher, blockSize: 16 };
  const provider = createPromptBlocksProvider({
    ...options,
    mediaStartId: mediaStartId!,
    seedFor: () => hasher.seedFor(MODEL),
  });
  const system = { role: 'system', content: longText(400, 3) };
  const text = [system, { role: 'user', content: 'describe it' }];
  const plain = await provider({ model: MODEL, messages: text }, MODEL, 'chat');
  const salted = await provider({ model: MODEL, messages: text, cache_salt: 'a' }, MODEL, 'chat');
  const ids = await tokenizer.tokenizeChat(text);
  t.same(salted!.hashes, hasher.hashBlocks(ids, 16, hasher.seedFor(MODEL), undefined, 'a'), 'salt in the first block');
  t.not(salted!.hashes[0], plain!.hashes[0]);
  t.same(
    (await provider({ model: MODEL, prompt: 'hello '.repeat(40), cache_salt: 'a' }, MODEL, 'completion'))!.hashes,
    hasher.hashBlocks(
      await tokenizer.tokenizeCompletion('hello '.repeat(40)),
      16,
      hasher.seedFor(MODEL),
      undefined,
      'a',
    ),
    'completions too',
  );

  const image = (url: string) => [
    system,
    {
      role: 'user',
      content: [
        { type: 'text', text: 'describe it' },
        { type: 'image_url', image_url: { url } },
      ],
    },
  ];
  const withImage = await provider({ model: MODEL, messages: image('https://x/cat.png') }, MODEL, 'chat');
  const systemIds = await tokenizer.tokenizeChat([system], { addGenerationPrompt: false });
  const before = Math.floor(systemIds.length / 16);
  t.ok(before > 10, `${before} text blocks before the image`);
  t.ok(withImage!.stoppedAt, 'stopped');
  t.equal(withImage!.stoppedAt!.reason, 'multimodal');
  const stop = withImage!.stoppedAt!.block;
  t.equal(withImage!.hashes.length, stop, 'nothing hashed from the media block on');
  t.ok(stop >= before - 1 && stop <= before + 1, `stops at block ${stop}, where the user turn starts`);
  t.same(withImage!.hashes, plain!.hashes.slice(0, stop), 'the text blocks before it are exact');
  const other = await provider({ model: MODEL, messages: image('https://x/dog.png') }, MODEL, 'chat');
  t.same(other!.hashes, withImage!.hashes, 'another image: the same text blocks, nothing more');

  const noMedia = createPromptBlocksProvider({ ...options, seedFor: () => hasher.seedFor(MODEL) });
  t.equal(
    await noMedia({ model: MODEL, messages: image('https://x/cat.png') }, MODEL, 'chat'),
    undefined,
    'a tokenizer without the media token: no blocks at all',
  );
});
