import t from 'tap';
import { request } from 'undici';
import { eventually, MODEL, startFleet } from '../fixtures/gateway.js';

// A slow prefill (0.1 ms/token) so recomputing a prefix and loading it back over PCIe differ clearly.
const SIM = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-blocks', '400', '--cpu-kv-blocks', '4000', '--prefill-b', '0.1'];
const doc = (tag: string) => Array.from({ length: 700 }, (_, i) => `fact ${i} of ${tag}.`).join(' ');
const TOOLS = [{ type: 'function', function: { name: 'search', parameters: { type: 'object', properties: {} } } }];

async function post(
  url: string,
  body: unknown,
): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.statusCode, headers: res.headers, json: await res.body.json() };
}

t.test('a tool-call turn, GPU pressure moves its prefix to CPU, the follow-up goes back and loads it', async (t) => {
  const fleet = await startFleet(t.teardown, 2, { strategy: 'kv' }, SIM, {
    toolRetention: { enabled: true, engine: 'lmcache', defaultRetainMs: 60_000 },
  });
  const messages: any[] = [
    { role: 'system', content: doc('session') },
    { role: 'user', content: 'Find the answer.' },
  ];
  const first = await post(`${fleet.url}/v1/chat/completions`, {
    model: MODEL,
    messages,
    tools: TOOLS,
    tool_choice: { type: 'function', function: { name: 'search' } },
    max_tokens: 4,
  });
  t.equal(first.status, 200);
  t.equal(first.json.choices[0].finish_reason, 'tool_calls');
  const holder = first.headers['x-kvgate-worker'] as string;
  const holderUrl = fleet.workers.find((w) => w.worker === holder)!.url;
  const tools = await eventually(async () => {
    const s = (await (await request(`${fleet.adminUrl}/debug/tools`)).body.json()) as any;
    return s.pendingSessions === 1 && s;
  });
  t.equal(tools.engine, 'lmcache');

  // The tool runs; meanwhile other prompts fill the holder's GPU cache (straight to it) and evict the prefix.
  for (let i = 0; i < 3; i++)
    await post(`${holderUrl}/v1/chat/completions`, {
      model: MODEL,
      messages: [{ role: 'user', content: doc(`other${i}`) }],
      max_tokens: 1,
    });
  const stats = (await (await request(`${holderUrl}/sim/stats`)).body.json()) as any;
  t.ok(stats.evictions > 0, 'GPU blocks were evicted');
  t.ok(stats.cpuBlocks > 0 && stats.cpuPinnedBlocks > 0, 'the session prefix is on CPU, pinned');

  messages.push(
    { role: 'assistant', content: null, tool_calls: first.json.choices[0].message.tool_calls },
    { role: 'tool', tool_call_id: first.json.choices[0].message.tool_calls[0].id, content: 'the tool result' },
  );
  const follow = { model: MODEL, messages, max_tokens: 4 };
  // The index sees the prefix on the holder's CPU tier, and /debug/route shows the affinity.
  const route = await eventually(async () => {
    const r = await post(`${fleet.adminUrl}/debug/route`, follow);
    const terms = r.json.explain.strategy ?? r.json.explain;
    return r.json.toolSession?.affinity === holder && terms.cpuTierBlocks > 0 && r.json;
  });
  t.equal(route.worker, holder);
  t.ok(route.toolSession.pending.keepMs > 0);

  const t0 = performance.now();
  const back = await post(`${fleet.url}/v1/chat/completions`, follow);
  const warmMs = performance.now() - t0;
  t.equal(back.headers['x-kvgate-worker'], holder);
  const promptTokens = back.json.usage.prompt_tokens;
  t.ok(
    back.json.usage.prompt_tokens_details.cached_tokens > promptTokens * 0.8,
    'the prefix came back from host memory',
  );
  const after = (await (await request(`${holderUrl}/sim/stats`)).body.json()) as any;
  t.ok(after.cpuLoadTokens > 0);

  // The same prompt with nothing cached anywhere (a different document of the same size) pays the whole prefill.
  const cold = [{ role: 'system', content: doc('cold') }, ...messages.slice(1)];
  const t1 = performance.now();
  await post(`${holderUrl}/v1/chat/completions`, { model: MODEL, messages: cold, max_tokens: 4 });
  const coldMs = performance.now() - t1;
  t.ok(coldMs > 2 * warmMs, `follow-up ${warmMs.toFixed(0)} ms vs cold ${coldMs.toFixed(0)} ms`);

  const metrics = await (await request(`${fleet.url}/metrics`)).body.text();
  t.match(metrics, /kvgate_tool_followups_total\{outcome="(kept|moved)"\} 1/);
  t.match(metrics, /kvgate_tool_retain_requests_total\{engine="lmcache",result="ok"\} 1/);
});
