import t from 'tap';
import { request } from 'undici';
import { eventually, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

/**
 * Data-parallel ranks end to end: one simulated vLLM server with two ranks
 * (each its own KV cache, scheduler and event publisher on port + rank), the
 * gateway subscribed to both (`dataParallelSize: 2`). A conversation sticks to
 * the rank holding its prefix (the proxy names it in X-data-parallel-rank), the
 * prediction equals what that rank reuses, and a conversation the engine's own
 * balancer put on the other rank is followed there.
 */
const BLOCK = 16;

interface RankStats {
  prefixQueryTokens: number;
  prefixHitTokens: number;
  running: number;
}

t.test('turns stick to the rank holding their prefix; each rank is its own target', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1, [
    '--data-parallel-size',
    '2',
    '--kv-events',
    'tcp://127.0.0.1:*',
    '--kv-events-replay',
    'tcp://127.0.0.1:*',
    '--speedup',
    '5',
  ]);
  const sim = workers[0]!;
  t.equal((sim as unknown as { dataParallelSize: number }).dataParallelSize, 2, 'the ready line says 2 ranks');
  const { url, adminUrl } = await startGateway(teardown, {
    server: { host: '127.0.0.1' },
    fleet: {
      health: { intervalMs: 200, timeoutMs: 500 },
      workers: [
        {
          id: sim.worker,
          url: sim.url,
          models: [MODEL],
          kvEvents: { endpoint: sim.kvEvents, replayEndpoint: sim.kvReplay, dataParallelSize: 2 },
        },
      ],
    },
    models: { [MODEL]: { tokenizer: { type: 'local', dir: QWEN3_TOKENIZER_DIR }, blockSize: BLOCK } },
    routing: { strategy: 'kv' },
  });
  const ranks = async () =>
    ((await (await request(`${sim.url}/sim/stats`)).body.json()) as { dataParallelRanks: RankStats[] })
      .dataParallelRanks;
  const indexedBlocks = async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index: { workers: Record<string, { index?: { blocks: number } }> };
    };
    return body.index.workers[sim.worker]?.index?.blocks ?? 0;
  };
  const route = async (messages: unknown[]) =>
    (await (
      await request(`${adminUrl}/debug/route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, messages }),
      })
    ).body.json()) as { predictedCachedBlocks: number; dataParallelRank?: number };
  const chat = async (messages: unknown[], maxTokens = 4) => {
    const r = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages, max_tokens: maxTokens }),
    });
    const json = (await r.body.json()) as {
      usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
      choices: { message: { content: string } }[];
    };
    t.equal(r.statusCode, 200);
    return {
      cached: json.usage.prompt_tokens_details.cached_tokens,
      prompt: json.usage.prompt_tokens,
      content: json.choices[0]!.message.content,
    };
  };
  const convo = (topic: string) => [
    { role: 'system', content: `You answer questions about ${topic}. `.repeat(30) },
    { role: 'user', content: `Tell me about ${topic}.` },
  ];

  // Turn 1 of A runs long on an idle server: vLLM's balancer puts it on rank 0. B arrives
  // meanwhile and the balancer (waiting*4 + running) puts it on rank 1.
  let a = convo('glaciers');
  let b = convo('volcanoes');
  const aFirst = chat(a, 200);
  await eventually(async () => (await ranks())[0]!.running === 1, 10_000, 20);
  const bFirst = await chat(b);
  const a1 = await aFirst;
  const afterFirst = await ranks();
  t.equal(afterFirst[0]!.prefixQueryTokens, a1.prompt, 'A ran on rank 0');
  t.equal(afterFirst[1]!.prefixQueryTokens, bFirst.prompt, 'B ran on rank 1');
  await eventually(
    async () => (await indexedBlocks()) >= Math.floor(a1.prompt / BLOCK) + Math.floor(bFirst.prompt / BLOCK),
    20_000,
    100,
  );

  // Later turns: the gateway names the rank holding each prefix, and predicts what that rank reuses.
  a = [...a, { role: 'assistant', content: a1.content }, { role: 'user', content: 'And in winter?' }];
  b = [...b, { role: 'assistant', content: bFirst.content }, { role: 'user', content: 'And underwater?' }];
  for (const [name, messages, rank] of [
    ['A', a, 0],
    ['B', b, 1],
  ] as const) {
    const before = await ranks();
    const plan = await route(messages);
    t.equal(plan.dataParallelRank, rank, `${name}: routed to rank ${rank}`);
    t.ok(plan.predictedCachedBlocks > 10, `${name}: ${plan.predictedCachedBlocks} blocks predicted`);
    const r = await chat(messages);
    t.equal(plan.predictedCachedBlocks, r.cached / BLOCK, `${name}: predicted blocks = engine cached tokens / 16`);
    const now = await ranks();
    t.equal(now[rank]!.prefixHitTokens - before[rank]!.prefixHitTokens, r.cached, `${name}: rank ${rank} served it`);
    t.equal(now[1 - rank]!.prefixQueryTokens, before[1 - rank]!.prefixQueryTokens, `${name}: the other rank did not`);
  }

  // /debug/workers: one event stream per rank, each with its own batches.
  const dbg = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index: { workers: Record<string, { events: { ranks: { connected: boolean; batchesApplied: number }[] } }> };
  };
  const perRank = dbg.index.workers[sim.worker]!.events.ranks;
  t.equal(perRank.length, 2, 'two rank streams');
  for (const [i, r] of perRank.entries()) {
    t.ok(r.connected, `rank ${i} connected`);
    t.ok(r.batchesApplied > 0, `rank ${i} applied ${r.batchesApplied} batches`);
  }
});
