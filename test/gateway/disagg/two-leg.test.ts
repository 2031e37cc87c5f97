import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';
import { longText, pdConfig } from '../../fixtures/disagg.js';

/**
 * The two-leg flow end to end: simulated workers speak vLLM's NixlConnector
 * protocol, the gateway sends the prefill leg to the prefill worker and the
 * original request, with the returned kv_transfer_params, to a decode worker.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];

t.test('prefill on the prefill worker, decode elsewhere; short prompts stay aggregated', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '10', '--role', 'prefill,decode,decode', ...EVENTS]);
  t.equal(workers[0]!.role, 'prefill', 'the ready line carries the role');
  t.match(workers[0]!.engineId, /^[0-9a-f-]{36}$/);
  const { url, adminUrl } = await startGateway(
    teardown,
    pdConfig(workers, ['prefill', 'decode', 'decode'], { minUncachedTokens: 256 }),
  );
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const stats = async (i: number) =>
    (await (await request(`${workers[i]!.url}/sim/stats`)).body.json()) as Record<string, number>;

  const chat = [{ role: 'user' as const, content: longText('chat', 800) }];
  const one = await client.chat.completions.create({ model: MODEL, messages: chat, max_tokens: 6 }).withResponse();
  t.match(one.response.headers.get('x-kvgate-worker'), /^prefill=sim-0,decode=sim-[12]$/, 'both legs named');
  t.equal(one.response.headers.get('x-kvgate-disagg'), 'disaggregated');
  t.equal(one.data.usage?.completion_tokens, 6, 'the decode worker generates every token');
  const prompt = one.data.usage!.prompt_tokens;
  t.ok(prompt > 800, `${prompt} prompt tokens`);
  t.equal(
    one.data.usage?.prompt_tokens_details?.cached_tokens,
    prompt - 1,
    'the transferred prefix counts as cached (all but the last token)',
  );
  const decodeId = Number(one.response.headers.get('x-kvgate-worker')!.slice(-1));
  const d = await stats(decodeId);
  t.equal(d.kvLoads, 1, 'the decode worker pulled one remote prefill');
  t.equal(d.prefillTokensComputed, 1, 'and computed only the last prompt token');
  const p = await eventually(async () => {
    const s = await stats(0);
    return s.nixlPulled === 1 && s.kvBlocksUsed === 0 ? s : undefined;
  });
  t.equal(
    p.prefillTokensComputed,
    prompt,
    'the prefill worker computed the prompt, then freed its blocks when they were pulled',
  );

  // The decode worker announced the pulled blocks (BlockStored), so the index sees them there.
  await eventually(async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index?: { workers?: Record<string, { index?: { blocks: number } }> };
    };
    return (body.index?.workers?.[`sim-${decodeId}`]?.index?.blocks ?? 0) >= Math.floor(prompt / 16) - 1;
  });

  // Streaming, completions API: the same split, the stream passes through.
  const text = longText('stream', 700);
  const stream = await client.completions
    .create({ model: MODEL, prompt: text, max_tokens: 5, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  t.match(stream.response.headers.get('x-kvgate-worker'), /^prefill=sim-0,decode=sim-[12]$/);
  const chunks: string[] = [];
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const c of stream.data) {
    if (c.choices[0]) chunks.push(c.choices[0].text);
    if (c.usage) usage = c.usage;
  }
  t.equal(chunks.length, 5, 'five streamed tokens');
  t.ok(
    usage && usage.prompt_tokens_details!.cached_tokens! >= usage.prompt_tokens - 16,
    `cached ${usage?.prompt_tokens_details?.cached_tokens} of ${usage?.prompt_tokens}`,
  );

  // A short prompt is not worth a second leg: aggregated on a decode worker.
  const short = await client.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: 'hi there' }], max_tokens: 3 })
    .withResponse();
  t.match(short.response.headers.get('x-kvgate-worker'), /^sim-[12]$/);
  t.equal(short.response.headers.get('x-kvgate-disagg'), 'aggregated');

  // /debug/route shows both choices and the reason.
  const dry = (await (
    await request(`${adminUrl}/debug/route`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: longText('dry', 600) }] }),
    })
  ).body.json()) as {
    disaggregation: {
      path: string;
      reason: string;
      prefill: { worker: string };
      decode: { worker: string };
      uncachedTokens: number;
    };
  };
  t.equal(dry.disaggregation.path, 'disaggregated');
  t.equal(dry.disaggregation.prefill.worker, 'sim-0');
  t.match(dry.disaggregation.decode.worker, /^sim-[12]$/);
  t.match(dry.disaggregation.reason, /minUncachedTokens 256/);

  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.equal(metricValue(metrics, 'kvgate_disagg_requests_total', { path: 'disaggregated' }), 2);
  t.equal(metricValue(metrics, 'kvgate_disagg_requests_total', { path: 'aggregated' }), 1);
  t.equal(metricValue(metrics, 'kvgate_disagg_prefill_seconds_count', { worker: 'sim-0' }), 2);
  t.ok((metricValue(metrics, 'kvgate_recommended_prefill_workers', { pool: 'default' }) ?? 0) >= 1);
  t.ok((metricValue(metrics, 'kvgate_recommended_decode_workers', { pool: 'default' }) ?? 0) >= 1);
  const planner = (await (await request(`${adminUrl}/debug/planner`)).body.json()) as {
    pools: {
      pool: string;
      requests: number;
      basis: string;
      prefill: { current: number };
      decode: { current: number };
    }[];
  };
  t.match(planner.pools[0], {
    pool: 'default',
    requests: 3,
    basis: 'measured',
    prefill: { current: 1 },
    decode: { current: 2 },
  });
});
