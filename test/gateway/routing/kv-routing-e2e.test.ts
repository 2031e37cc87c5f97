import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { SHARED_PREFIX_CHILDREN } from '../../../indexer/index/radix-index.js';
import {
  eventually,
  fleetConfig,
  metricValue,
  MODEL,
  startGateway,
  startSim,
  type SimWorkerLine,
} from '../../fixtures/gateway.js';

/**
 * KV-aware routing end to end: simulated workers publish real ZeroMQ KV events,
 * the gateway indexes them, and requests that share a prefix follow it.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const SYSTEM = 'You are a meticulous assistant. '.repeat(120);

const indexedBlocks = async (adminUrl: string, worker: string) => {
  const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index?: { workers?: Record<string, { index?: { blocks: number } }> };
  };
  return body.index?.workers?.[worker]?.index?.blocks ?? 0;
};

const fleetHitRate = async (workers: readonly SimWorkerLine[]) => {
  let hits = 0;
  let queries = 0;
  for (const w of workers) {
    const text = await (await request(`${w.url}/metrics`)).body.text();
    hits += metricValue(text, 'vllm:prefix_cache_hits_total') ?? 0;
    queries += metricValue(text, 'vllm:prefix_cache_queries_total') ?? 0;
  }
  return queries === 0 ? 0 : hits / queries;
};

t.test('a request sharing a long prefix goes to the worker that cached it', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 4, ['--speedup', '20', ...EVENTS]);
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const first = [
    { role: 'system' as const, content: SYSTEM },
    { role: 'user' as const, content: 'What is a KV cache?' },
  ];

  const one = await client.chat.completions.create({ model: MODEL, messages: first, max_tokens: 8 }).withResponse();
  const home = one.response.headers.get('x-kvgate-worker')!;
  t.equal(one.response.headers.get('x-kvgate-strategy'), 'kv');
  t.equal(one.data.usage?.prompt_tokens_details?.cached_tokens ?? 0, 0, 'cold');
  await eventually(async () => (await indexedBlocks(adminUrl, home)) >= Math.floor(one.data.usage!.prompt_tokens / 16));

  const dry = (await (
    await request(`${adminUrl}/debug/route`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, messages: first, max_tokens: 8 }),
    })
  ).body.json()) as {
    worker: string;
    predictedCachedBlocks: number;
    candidates: { worker: string; terms: Record<string, number> }[];
  };
  t.equal(dry.worker, home, '/debug/route predicts the home worker');
  t.ok(dry.predictedCachedBlocks > 30, `predicted ${dry.predictedCachedBlocks} blocks`);
  t.equal(dry.candidates.length, 4);
  for (const c of dry.candidates)
    t.ok('cost' in c.terms && 'overlapBlocks' in c.terms, 'each candidate shows its terms');

  const second = [
    ...first,
    { role: 'assistant' as const, content: one.data.choices[0]!.message.content ?? '' },
    { role: 'user' as const, content: 'And why does routing matter?' },
  ];
  const two = await client.chat.completions.create({ model: MODEL, messages: second, max_tokens: 8 }).withResponse();
  t.equal(
    two.response.headers.get('x-kvgate-worker'),
    home,
    `the follow-up turn lands where its prefix is cached (home ${home})`,
  );
  t.ok(
    Number(two.response.headers.get('x-kvgate-cached-blocks')) > 30,
    `header says ${two.response.headers.get('x-kvgate-cached-blocks')}`,
  );
  const cached = two.data.usage?.prompt_tokens_details?.cached_tokens ?? 0;
  t.ok(cached >= 16 * 30, `the engine reports ${cached} cached tokens`);

  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.match(metrics, /kvgate_kv_indexed_blocks\{worker="sim-\d"\} [1-9]/);
  t.match(metrics, /kvgate_kv_event_batches_applied_total\{worker="sim-\d"\} [1-9]/);
  t.match(metrics, /kvgate_predicted_cached_tokens_count\{strategy="kv",arm="none"\} [1-9]/);
  t.match(metrics, /kvgate_tokenize_seconds_count [1-9]/);
});

t.test('an overloaded home worker loses a request with only a modest prefix match', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 2, ['--speedup', '1', ...EVENTS]);
  // A low reuse credit: at the default (200) a few cached blocks outweigh any decode load by design
  // (tuned on the Mooncake replay, where decode barely delays a chunked prefill); this checks the
  // load terms end to end, as an operator who lowers it to balance decode would rely on.
  const { url, adminUrl } = await startGateway(
    teardown,
    fleetConfig(workers, { strategy: 'kv', params: { reuseCredit: 3 } }),
  );
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const modest = 'A short shared preamble, a handful of blocks long. '.repeat(8);
  const long = `${modest}${'Background material that only the home worker has cached. '.repeat(150)}`;
  const warm = await client.completions.create({ model: MODEL, prompt: long, max_tokens: 1 }).withResponse();
  const home = warm.response.headers.get('x-kvgate-worker')!;
  t.ok(warm.data.usage!.prompt_tokens > 1200, `${warm.data.usage!.prompt_tokens} prompt tokens`);
  await eventually(
    async () => (await indexedBlocks(adminUrl, home)) >= Math.floor(warm.data.usage!.prompt_tokens / 16),
  );

  // A long generation that shares the long prefix follows it home and keeps that worker busy.
  const abort = new AbortController();
  teardown(() => abort.abort());
  const busy = await client.completions
    .create(
      { model: MODEL, prompt: `${long} Now write a very long essay.`, max_tokens: 20_000, stream: true },
      { signal: abort.signal },
    )
    .withResponse();
  t.equal(busy.response.headers.get('x-kvgate-worker'), home, 'a long shared prefix is worth the trip home');
  void (async () => {
    try {
      for await (const _ of busy.data) {
        /* drain */
      }
    } catch {
      /* aborted */
    }
  })();

  // A prompt that shares only the modest preamble: those few blocks are not worth the queue.
  const other = await client.completions
    .create({
      model: MODEL,
      prompt: `${modest} Something unrelated follows. ${'Fresh text. '.repeat(100)}`,
      max_tokens: 1,
    })
    .withResponse();
  t.not(other.response.headers.get('x-kvgate-worker'), home, 'the loaded worker is avoided');
  const dry = (await (
    await request(`${adminUrl}/debug/route`, {
      method: 'POST',
      body: JSON.stringify({
        model: MODEL,
        prompt: `${modest} Something unrelated follows. ${'Fresh text. '.repeat(100)}`,
        max_tokens: 1,
      }),
    })
  ).body.json()) as {
    candidates: { worker: string; terms: Record<string, number> }[];
  };
  const homeTerms = dry.candidates.find((c) => c.worker === home)!.terms;
  t.ok(homeTerms.overlapBlocks! > 0, `home still holds ${homeTerms.overlapBlocks} blocks of it`);
  t.ok(homeTerms.decodeBlocks! > 1000, 'and carries the long generation as decode load');
});

t.test('a system prompt many requests share is not pinned to its worker when that worker is loaded', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 2, ['--speedup', '1', ...EVENTS]);
  // Default parameters: the reuse credit (200) must not apply to a prefix several requests branch from.
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const system = 'You are a terse assistant for a help desk. '.repeat(40);
  const ask = (q: number) =>
    `${system} Question ${q}: ${'please explain how this product handles the case in detail. '.repeat(3)}`;
  const first = await client.completions.create({ model: MODEL, prompt: ask(0), max_tokens: 1 }).withResponse();
  const home = first.response.headers.get('x-kvgate-worker')!;
  for (let q = 1; q < SHARED_PREFIX_CHILDREN; q++) {
    const r = await client.completions.create({ model: MODEL, prompt: ask(q), max_tokens: 1 }).withResponse();
    t.equal(
      r.response.headers.get('x-kvgate-worker'),
      home,
      `question ${q} follows the cached system prompt while its worker is idle`,
    );
  }
  const route = async (prompt: string) =>
    (await (
      await request(`${adminUrl}/debug/route`, {
        method: 'POST',
        body: JSON.stringify({ model: MODEL, prompt, max_tokens: 1 }),
      })
    ).body.json()) as {
      worker: string;
      candidates: { worker: string; terms: Record<string, number> }[];
    };
  // That many different questions continue from the system prompt: the index calls it shared.
  const terms = await eventually(async () => {
    const c = (await route(ask(SHARED_PREFIX_CHILDREN))).candidates.find((x) => x.worker === home)!.terms;
    return c.sharedPrefixBlocks! > 0 ? c : undefined;
  });
  t.ok(
    terms.overlapBlocks! >= terms.sharedPrefixBlocks! && terms.sharedPrefixBlocks! >= 20,
    `home holds ${terms.overlapBlocks} blocks, ${terms.sharedPrefixBlocks} of them a shared prefix`,
  );
  t.equal(terms.exclusiveBlocks, 0, 'no reuse credit for the shared prefix');

  // A long generation on the home worker: the next question goes to the other worker and caches the prompt there too.
  const abort = new AbortController();
  teardown(() => abort.abort());
  const busy = await client.completions
    .create(
      { model: MODEL, prompt: `${system} Write a very long essay.`, max_tokens: 20_000, stream: true },
      { signal: abort.signal },
    )
    .withResponse();
  t.equal(busy.response.headers.get('x-kvgate-worker'), home);
  void (async () => {
    try {
      for await (const _ of busy.data) {
        /* drain */
      }
    } catch {
      /* aborted */
    }
  })();
  const next = await client.completions
    .create({ model: MODEL, prompt: ask(SHARED_PREFIX_CHILDREN + 1), max_tokens: 1 })
    .withResponse();
  t.not(
    next.response.headers.get('x-kvgate-worker'),
    home,
    'the loaded home worker is avoided despite holding the system prompt alone',
  );
});

t.test('multi-turn sessions: kv routing raises the fleet prefix-cache hit rate over round-robin', async (t) => {
  const teardown = t.teardown.bind(t);
  const rates: Record<string, number> = {};
  for (const strategy of ['round-robin', 'kv']) {
    const { workers } = await startSim(teardown, 4, ['--speedup', '50', ...EVENTS]);
    const { url } = await startGateway(teardown, fleetConfig(workers, { strategy }));
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const conversations = Array.from(
      { length: 6 },
      (_, i) =>
        [
          { role: 'system' as const, content: `Conversation ${i}. ${SYSTEM.slice(0, 1500)}` },
        ] as OpenAI.ChatCompletionMessageParam[],
    );
    for (let turn = 0; turn < 4; turn++) {
      for (const messages of conversations) {
        messages.push({ role: 'user', content: `Question ${turn}: tell me more about topic ${turn}.` });
        const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 16 });
        messages.push({ role: 'assistant', content: r.choices[0]!.message.content ?? '' });
      }
      await new Promise((r) => setTimeout(r, 100)); // let the turn's KV events reach the index
    }
    rates[strategy] = await fleetHitRate(workers);
  }
  t.ok(
    rates.kv! > rates['round-robin']! + 0.2,
    `hit rate kv ${rates.kv!.toFixed(2)} vs round-robin ${rates['round-robin']!.toFixed(2)}`,
  );
  t.ok(rates.kv! > 0.6, `kv hit rate ${rates.kv!.toFixed(2)}`);
});
