import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';
import { startEpp } from '../../fixtures/epp.js';

/**
 * The EPP is another front over the same routing core: over one simulated
 * fleet (both fed by the same KV events), the EPP and the proxy pick the same
 * worker with the same predicted cached blocks for every turn of a conversation.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const SYSTEM = 'You are a meticulous assistant. '.repeat(120);

const indexedBlocks = async (adminUrl: string) => {
  const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index?: { workers?: Record<string, { index?: { blocks: number } }> };
  };
  return Object.values(body.index?.workers ?? {}).reduce((n, w) => n + (w.index?.blocks ?? 0), 0);
};

void t.test('a conversation routes the same through the EPP and the proxy', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 4, ['--speedup', '20', ...EVENTS]);
  const config = fleetConfig(workers, { strategy: 'kv' });
  const proxy = await startGateway(teardown, config);
  const { envoy, adminUrl: eppAdminUrl } = await startEpp(teardown, config, { name: 'epp.yaml' });
  const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: 'unused', maxRetries: 0 });

  const messages: { role: 'system' | 'user' | 'assistant'; content: string }[] = [{ role: 'system', content: SYSTEM }];
  let home: string | undefined;
  for (const [turn, question] of ['What is a KV cache?', 'Why does routing matter?', 'And eviction?'].entries()) {
    messages.push({ role: 'user', content: question });
    const body = Buffer.from(JSON.stringify({ model: MODEL, messages, max_tokens: 8 }));
    // Both indexes have seen every event of the previous turns before either decides.
    const blocks = await eventually(async () => {
      const [a, b] = await Promise.all([indexedBlocks(proxy.adminUrl), indexedBlocks(eppAdminUrl)]);
      return a === b ? { a } : undefined;
    });
    // The cold first turn is a tie between idle workers, broken at random by each process: not compared.
    const picked = turn === 0 ? undefined : await envoy.process({ path: '/v1/chat/completions', chunks: [body] });
    const served = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8 }).withResponse();
    const worker = served.response.headers.get('x-kvgate-worker');
    home ??= worker ?? undefined;
    messages.push({ role: 'assistant', content: served.data.choices[0]!.message.content ?? '' });
    if (!picked) continue;
    t.equal(picked.setHeaders['x-kvgate-worker'], worker, `turn ${turn}: same worker (${worker})`);
    t.equal(
      picked.setHeaders['x-kvgate-cached-blocks'],
      served.response.headers.get('x-kvgate-cached-blocks') ?? undefined,
      `turn ${turn}: same predicted cached blocks (${picked.setHeaders['x-kvgate-cached-blocks']}), ${blocks.a} indexed`,
    );
    t.equal(worker, home, `turn ${turn} stays where the conversation is cached`);
    t.ok(Number(picked.setHeaders['x-kvgate-cached-blocks']) > 30, 'predicted a long cached prefix');
  }

  // The EPP charges its pick with the part of the prompt still to prefill, as the proxy does:
  // while the stream is open (Envoy has not answered yet), the worker's in-prefill line holds it.
  messages.push({ role: 'user', content: 'One more question.' });
  const held = envoy.open({
    path: '/v1/chat/completions',
    chunks: [Buffer.from(JSON.stringify({ model: MODEL, messages, max_tokens: 8 }))],
    keepOpen: true,
  });
  await eventually(async () => held.out.header !== undefined || undefined);
  const cached = Number(held.out.setHeaders['x-kvgate-cached-blocks']);
  const body = (await (await request(`${eppAdminUrl}/debug/workers`)).body.json()) as {
    workers: { id: string; inPrefill: { promptTokens: number; uncachedTokens: number } }[];
  };
  const line = body.workers.find((w) => w.id === held.out.setHeaders['x-kvgate-worker'])!.inPrefill;
  t.ok(line.promptTokens > 600, `the whole prompt in prefill: ${line.promptTokens} tokens`);
  t.equal(
    line.promptTokens - line.uncachedTokens,
    cached * workers[0]!.blockSize,
    `and of it, to prefill, all but the ${cached} predicted cached blocks: ${line.uncachedTokens} tokens`,
  );
  held.call.end();
  await held.done;
});
