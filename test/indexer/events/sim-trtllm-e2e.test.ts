import t from 'tap';
import { request } from 'undici';
import { eventually, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

/**
 * TensorRT-LLM cache levels end to end: the simulator serves trtllm-serve's
 * `POST /kv_cache_events` with a small GPU pool and a two-level cache; the
 * gateway polls it. Stored blocks are indexed on the GPU tier, a GPU eviction
 * moves them to level 1 (the index shows them on the cpu tier), and the
 * level's own eviction removes them from every tier. At each step the index
 * holds exactly what the engine holds on both levels.
 */
const BLOCK = 16;

interface SimStats {
  kvBlocksCached: number;
  kvSecondaryBlocksCached: number;
  kvOffloads: number;
  kvSecondaryEvictions: number;
}

t.test('stored, moved to level 1, removed: the index follows the engine tier by tier', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1, [
    '--kv-events-format',
    'trtllm',
    '--kv-blocks',
    '16',
    '--kv-secondary-blocks',
    '4',
    '--speedup',
    '20',
  ]);
  const sim = workers[0]!;
  const { url, adminUrl } = await startGateway(teardown, {
    server: { host: '127.0.0.1' },
    fleet: {
      health: { intervalMs: 200, timeoutMs: 500 },
      workers: [{ id: sim.worker, url: sim.url, models: [MODEL], kvEvents: { type: 'trtllm-http', intervalMs: 50 } }],
    },
    models: { [MODEL]: { tokenizer: { type: 'local', dir: QWEN3_TOKENIZER_DIR }, blockSize: BLOCK } },
    routing: { strategy: 'kv' },
  });
  const stats = async () => (await (await request(`${sim.url}/sim/stats`)).body.json()) as SimStats;
  const indexed = async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index: { workers: Record<string, { index?: { blocks: number } }> };
    };
    return body.index.workers[sim.worker]?.index?.blocks ?? 0;
  };
  // The index holds a block once per worker whatever its tier; the engine's levels are disjoint.
  const inStep = async () => {
    const s = await stats();
    const blocks = await indexed();
    return blocks === s.kvBlocksCached + s.kvSecondaryBlocksCached ? s : undefined;
  };
  const route = async (prompt: string) =>
    (await (
      await request(`${adminUrl}/debug/route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt }),
      })
    ).body.json()) as { predictedCachedBlocks: number; explain: { cpuTierBlocks?: number } };
  const complete = async (prompt: string) => {
    const r = await request(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
    });
    t.equal(r.statusCode, 200);
    return (await r.body.json()) as { usage: { prompt_tokens: number } };
  };
  // Distinct words per prompt, so no two prompts share a block.
  const text = (tag: string, words: number) => Array.from({ length: words }, (_, i) => `${tag}${i}`).join(' ');

  // Stored: A's full blocks, all on the GPU tier.
  const a = text('alpha', 30);
  const ra = await complete(a);
  const aBlocks = Math.floor(ra.usage.prompt_tokens / BLOCK);
  t.ok(aBlocks >= 4, `A fills ${aBlocks} blocks`);
  await eventually(inStep, 10_000, 50);
  const stored = await route(a);
  t.equal(stored.predictedCachedBlocks, aBlocks, 'A indexed');
  t.equal(stored.explain.cpuTierBlocks, undefined, 'all of A on the GPU tier');

  // Moved: B needs most of the 16-block pool, so the GPU evicts part of A into level 1.
  await complete(text('beta', 70));
  const moved = await eventually(async () => {
    const s = await inStep();
    return s && s.kvOffloads > 0 ? s : undefined;
  });
  const offloaded = await route(a);
  t.equal(offloaded.predictedCachedBlocks, aBlocks, 'A still indexed, all of it');
  t.ok((offloaded.explain.cpuTierBlocks ?? 0) > 0, `${offloaded.explain.cpuTierBlocks} of A's blocks on the cpu tier`);
  t.equal(offloaded.explain.cpuTierBlocks, moved.kvSecondaryBlocksCached, 'the index tier = the engine level');

  // Removed: more prompts push every A block through level 1 and out of it.
  await complete(text('gamma', 70));
  await complete(text('delta', 70));
  const removed = await eventually(async () => {
    const s = await inStep();
    return s && s.kvSecondaryEvictions >= aBlocks ? s : undefined;
  });
  t.ok(removed.kvSecondaryEvictions > 0, `${removed.kvSecondaryEvictions} blocks left level 1`);
  const gone = await route(a);
  t.equal(gone.predictedCachedBlocks, 0, 'A gone from every tier');
});
