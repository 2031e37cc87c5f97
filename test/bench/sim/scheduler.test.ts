import t, { type Test } from 'tap';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { startSimWorker, type SimWorker, type SimWorkerOptions } from '../../../bench/sim/worker.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);

async function worker(t: Test, options: SimWorkerOptions): Promise<SimWorker> {
  const w = await startSimWorker({ tokenizer, ...options });
  t.teardown(() => w.close());
  return w;
}

/** A deterministic pseudo-random prompt of `n` token ids. */
function promptIds(n: number, salt: number): number[] {
  let x = 2463534242 ^ salt;
  return Array.from({ length: n }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % 100_000;
  });
}

interface Timed {
  ttftMs: number;
  usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  chunks: number;
}

/** Streams a completion and measures the time to its first token chunk, as a client sees it. */
async function streamCompletion(url: string, prompt: number[], maxTokens: number): Promise<Timed> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  let ttftMs = -1;
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (ttftMs < 0) ttftMs = performance.now() - started;
    text += decoder.decode(chunk, { stream: true });
  }
  const events = text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice(6));
  if (events.at(-1) !== '[DONE]') throw new Error(`stream did not end with [DONE]: ${text.slice(-200)}`);
  const objects = events.slice(0, -1).map((e) => JSON.parse(e) as { choices: unknown[]; usage?: Timed['usage'] });
  return { ttftMs, usage: objects.at(-1)!.usage!, chunks: objects.filter((o) => o.choices.length > 0).length };
}

t.test(
  'a repeated 4k-token prompt hits the prefix cache: cached tokens, less prefill, faster first token',
  async (t) => {
    // Prefill made slower than the default so the cold/warm gap dwarfs scheduling noise on a busy machine.
    const w = await worker(t, { timing: { prefillB: 0.05 } });
    const prompt = promptIds(4096, 1);
    const before = w.stats();
    const cold = await streamCompletion(w.url, prompt, 4);
    const mid = w.stats();
    const warm = await streamCompletion(w.url, prompt, 4);
    const after = w.stats();
    t.equal(cold.usage.prompt_tokens, 4096);
    t.equal(cold.usage.completion_tokens, 4);
    t.equal(cold.chunks, 4, 'one chunk per generated token');
    t.equal(cold.usage.prompt_tokens_details.cached_tokens, 0);
    t.equal(warm.usage.prompt_tokens_details.cached_tokens, 4080, 'whole blocks, the last token recomputed');
    t.equal(mid.prefillTokensComputed - before.prefillTokensComputed, 4096);
    t.equal(after.prefillTokensComputed - mid.prefillTokensComputed, 16);
    t.equal(after.prefixHitTokens, 4080);
    t.ok(warm.ttftMs < cold.ttftMs, `warm TTFT ${warm.ttftMs.toFixed(1)} ms < cold ${cold.ttftMs.toFixed(1)} ms`);
    t.equal(after.kvBlocksUsed, 0, 'finished requests hold no blocks');
    t.ok(after.kvBlocksCached >= 256, 'their blocks stay cached');
  },
);

t.test('a long prompt is prefilled in chunks of the step token budget', async (t) => {
  const w = await worker(t, { maxNumBatchedTokens: 1024, timing: { speedup: 20 } });
  const res = await streamCompletion(w.url, promptIds(4000, 2), 2);
  t.equal(res.usage.completion_tokens, 2);
  const s = w.stats();
  t.equal(s.prefillTokensComputed, 4000);
  t.equal(s.steps, 5, '4 prefill chunks (the last emits token 1) + 1 decode step');
});

t.test('under KV pressure requests queue or get preempted, all finish, capacity holds', async (t) => {
  const kvBlocks = 24; // 384 tokens; each request needs up to 13 blocks
  const w = await worker(t, { kvBlocks, timing: { speedup: 50 } });
  let maxUsed = 0;
  let sawWaiting = false;
  const sampler = setInterval(() => {
    const s = w.stats();
    maxUsed = Math.max(maxUsed, s.kvBlocksUsed);
    if (s.waiting > 0) sawWaiting = true;
  }, 1);
  t.teardown(() => clearInterval(sampler));
  const results = await Promise.all([1, 2, 3, 4].map((i) => streamCompletion(w.url, promptIds(100, 10 + i), 100)));
  clearInterval(sampler);
  for (const r of results) t.equal(r.usage.completion_tokens, 100);
  const s = w.stats();
  t.ok(sawWaiting || s.preemptions > 0, `requests had to wait (preemptions: ${s.preemptions})`);
  t.ok(maxUsed <= kvBlocks, `used blocks peaked at ${maxUsed} of ${kvBlocks}`);
  t.equal(s.kvBlocksUsed, 0);
  t.ok(s.evictions > 0, 'cached blocks were evicted to make room');
});

t.test('max-num-seqs caps the running set', async (t) => {
  const w = await worker(t, { maxNumSeqs: 2, timing: { speedup: 20 } });
  let maxRunning = 0;
  const sampler = setInterval(() => (maxRunning = Math.max(maxRunning, w.stats().running)), 1);
  t.teardown(() => clearInterval(sampler));
  await Promise.all([1, 2, 3, 4, 5].map((i) => streamCompletion(w.url, promptIds(50, 20 + i), 30)));
  clearInterval(sampler);
  t.ok(maxRunning <= 2 && maxRunning > 0, `max running ${maxRunning}`);
});

t.test('an engine loop held up by its process counts the lost time in /sim/stats', async (t) => {
  const w = await worker(t, { maxModelLen: 4096 });
  const done = streamCompletion(w.url, promptIds(64, 9), 400);
  while (w.stats().generatedTokens < 5) await new Promise((r) => setTimeout(r, 2));
  const before = w.stats().lostMs;
  const blockedUntil = performance.now() + 400;
  while (performance.now() < blockedUntil); // the process is busy: the engine cannot step on time
  await done;
  const lost = w.stats().lostMs - before;
  t.ok(lost >= 300, `lost ${lost} ms of a 400 ms stall (50 ms are caught up)`);
  t.ok(lost < 2000, 'and not much more');
});
