import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/**
 * Multimodal end to end: the simulator keys the blocks that cover an image by
 * the image (as vLLM keys them by the content hash); the gateway predicts only
 * the text blocks before the first image and says so in /debug/route. The
 * prediction never exceeds what the engine reuses, and equals it when the image differs.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const SYSTEM = 'You describe photographs for a catalogue, precisely and briefly. '.repeat(40);

t.test('an image stops the prediction at its first block', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1, ['--speedup', '20', ...EVENTS]);
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const worker = workers[0]!.worker;
  const indexed = async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index?: { workers?: Record<string, { index?: { blocks: number } }> };
    };
    return body.index?.workers?.[worker]?.index?.blocks ?? 0;
  };
  const body = (image: string) => ({
    model: MODEL,
    max_tokens: 4,
    messages: [
      { role: 'system', content: SYSTEM },
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: `https://images.example/${image}.png` } },
          { type: 'text', text: 'What is in this picture? '.repeat(10) },
        ],
      },
    ],
  });
  const chat = async (image: string) => {
    const r = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body(image)),
    });
    const json = (await r.body.json()) as {
      usage?: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } };
    };
    return {
      status: r.statusCode,
      predicted: Number(r.headers['x-kvgate-cached-blocks'] ?? 0),
      cached: json.usage?.prompt_tokens_details?.cached_tokens ?? -1,
      promptTokens: json.usage?.prompt_tokens ?? 0,
    };
  };

  const first = await chat('cat');
  t.equal(first.status, 200, 'the simulator serves an image_url part');
  await eventually(async () => (await indexed()) >= Math.floor(first.promptTokens / 16), 20_000, 100);

  const dry = await request(`${adminUrl}/debug/route`, { method: 'POST', body: JSON.stringify(body('dog')) });
  const route = (await dry.body.json()) as {
    explain?: { stoppedAt?: string; stoppedAtBlock?: number };
    predictedCachedBlocks?: number;
  };
  t.equal(route.explain?.stoppedAt, 'multimodal', '/debug/route says why the match stopped');
  const stop = route.explain?.stoppedAtBlock ?? -1;
  t.ok(stop > 10, `stopped at block ${stop}`);
  t.equal(route.predictedCachedBlocks, stop, 'every text block before the image is predicted');

  const dog = await chat('dog');
  t.equal(dog.predicted, stop);
  t.equal(dog.predicted, dog.cached / 16, 'another image: predicted blocks = engine cached tokens / 16');
  const cat = await chat('cat');
  t.equal(cat.predicted, stop, 'the same image: still only the text before it is predicted');
  t.ok(cat.cached / 16 >= cat.predicted, `the engine reuses ${cat.cached / 16} blocks, at least the prediction`);
});
