import t from 'tap';
import { request } from 'undici';
import { eventually, MODEL, startFleet } from '../fixtures/gateway.js';

// As in tool-retention-e2e: a slow prefill, a GPU cache the background prompts overflow, a CPU tier that keeps the prefix.
const SIM = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-blocks', '400', '--cpu-kv-blocks', '4000', '--prefill-b', '0.1'];
const doc = (tag: string) => Array.from({ length: 700 }, (_, i) => `fact ${i} of ${tag}.`).join(' ');
const TOOLS = [{ type: 'function', function: { name: 'search', parameters: { type: 'object', properties: {} } } }];
const FORCE = { type: 'function', function: { name: 'search' } };
const LEARNED_MS = 3000;

async function post(url: string, body: unknown): Promise<{ headers: Record<string, unknown>; json: any }> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.body.json();
  if (res.statusCode !== 200) throw new Error(`${res.statusCode}: ${JSON.stringify(json)}`);
  return { headers: res.headers, json };
}

const followUp = (messages: any[], call: any) => [
  ...messages,
  { role: 'assistant', content: null, tool_calls: [call] },
  { role: 'tool', tool_call_id: call.id, content: 'the tool result' },
];

t.test('the warm-up brings the evicted prefix back to GPU before the follow-up arrives', async (t) => {
  const fleet = await startFleet(t.teardown, 1, { strategy: 'kv' }, SIM, {
    toolRetention: { enabled: true, minSamples: 1, prefetch: { enabled: true, quantile: 0.1, leadMs: 1000 } },
  });
  const worker = fleet.workers[0]!.url;
  const stats = async () => (await (await request(`${worker}/sim/stats`)).body.json()) as any;
  const chat = (messages: any[], tools = true) =>
    post(`${fleet.url}/v1/chat/completions`, {
      model: MODEL,
      messages,
      max_tokens: 4,
      ...(tools ? { tools: TOOLS, tool_choice: FORCE } : {}),
    });

  // One tool call that takes LEARNED_MS teaches the gateway the tool's return delay.
  const learn = [{ role: 'user', content: 'Warm up the tool.' }];
  const taught = await chat(learn);
  await new Promise((r) => setTimeout(r, LEARNED_MS));
  await chat(followUp(learn, taught.json.choices[0].message.tool_calls[0]), false);

  const messages = [
    { role: 'system', content: doc('session') },
    { role: 'user', content: 'Find the answer.' },
  ];
  const first = await chat(messages);
  const calledAt = performance.now();
  const follow = {
    model: MODEL,
    messages: followUp(messages, first.json.choices[0].message.tool_calls[0]),
    max_tokens: 4,
  };
  const planned = (await post(`${fleet.adminUrl}/debug/route`, follow)).json.toolSession.pending.prefetch;
  t.equal(planned.outcome, 'planned');
  t.ok(planned.plannedAtMs > 0 && planned.plannedAtMs < LEARNED_MS, `planned at ${planned.plannedAtMs} ms`);

  // While the tool runs, other prompts push the prefix out of GPU memory into the CPU tier.
  // (Token ids straight to the worker: no tokenizing, and not the gateway's traffic.)
  const t0 = performance.now();
  for (let i = 0; i < 3; i++)
    await post(`${worker}/v1/completions`, {
      model: MODEL,
      prompt: Array.from({ length: 3000 }, (_, j) => 1000 + i * 3000 + j),
      max_tokens: 1,
    });
  t.comment(`fillers took ${(performance.now() - t0).toFixed(0)} ms`);
  t.ok(performance.now() - calledAt < planned.plannedAtMs, 'the prefix was evicted before the warm-up was due');
  const evicted = await stats();
  t.ok(evicted.evictions > 0, 'GPU blocks were evicted');

  const route = await eventually(async () => {
    const r = (await post(`${fleet.adminUrl}/debug/route`, follow)).json;
    return r.toolSession.pending.prefetch.outcome === 'ok' && r;
  });
  const warmed = await stats();
  t.ok(warmed.cpuLoadTokens > evicted.cpuLoadTokens, 'the warm-up loaded the prefix back from the CPU tier');
  t.ok(route.toolSession.pending.prefetch.cachedTokens > 0);

  const back = await post(`${fleet.url}/v1/chat/completions`, follow);
  const after = await stats();
  t.equal(after.cpuLoadTokens, warmed.cpuLoadTokens, 'the follow-up loaded nothing from CPU: its prefix was on GPU');
  const predicted = Number(back.headers['x-kvgate-cached-blocks']) * fleet.workers[0]!.blockSize;
  t.ok(predicted > 0);
  t.equal(back.json.usage.prompt_tokens_details.cached_tokens, predicted, 'cached tokens as the index predicted');
  t.ok(predicted > back.json.usage.prompt_tokens * 0.8);

  const tools = (await (await request(`${fleet.adminUrl}/debug/tools`)).body.json()) as any;
  t.same(tools.prefetch.outcomes, { ok: 1 }, 'the learning turn came back before its plan existed');
  const metrics = await (await request(`${fleet.url}/metrics`)).body.text();
  t.match(metrics, /kvgate_tool_prefetches_total\{outcome="ok"\} 1/);
  // The warm-up is not user traffic: the routed-request counter saw the user's four chats only.
  const routed = [...metrics.matchAll(/^kvgate_requests_total\{[^}]*\} (\d+)$/gm)].reduce(
    (n, m) => n + Number(m[1]),
    0,
  );
  t.equal(routed, 4);
});
