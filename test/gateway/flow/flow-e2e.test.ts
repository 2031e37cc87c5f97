import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/**
 * Flow control end to end: simulated workers with a slow prefill (0.5 ms per token, no
 * speed-up), and a gateway that counts a worker saturated as soon as it has any prefill
 * queued, so with two workers at most two requests are in prefill and the rest wait in
 * the gateway, where their class decides who goes next.
 */
const SIM = ['--prefill-a', '0', '--prefill-b', '0.5', '--prefill-c', '5', '--max-num-batched-tokens', '8192'];
const prompt = (words: number, tag: string) => `${tag} ${'word '.repeat(words)}`;

interface Sent {
  name: string;
  status: number;
  firstByteAt: number;
  ttftMs: number;
  worker: string | undefined;
  flow: string | undefined;
}

async function stream(url: string, name: string, headers: Record<string, string>, words = 2000, signal?: AbortSignal) {
  const sent = performance.now();
  const r = await request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, prompt: prompt(words, name), max_tokens: 4, stream: true }),
    signal,
  });
  let firstByteAt = 0;
  for await (const _chunk of r.body) if (firstByteAt === 0) firstByteAt = performance.now();
  const worker = r.headers['x-kvgate-worker'];
  const flow = r.headers['x-kvgate-flow'];
  return {
    flow: typeof flow === 'string' ? flow : undefined,
    name,
    status: r.statusCode,
    firstByteAt,
    ttftMs: firstByteAt - sent,
    worker: typeof worker === 'string' ? worker : undefined,
  } satisfies Sent;
}

const debugFlow = async (adminUrl: string) =>
  (await (await request(`${adminUrl}/debug/flow`)).body.json()) as {
    enabled: boolean;
    queued: number;
    classes: {
      name: string;
      queued: number;
      tenants: Record<string, number>;
      shed: Record<string, number>;
      admitted: { queued: number };
    }[];
    workers: { id: string; tokensPerSecond: number; observations: number }[];
  };

t.test(
  'through the gateway: held while saturated, critical first, disconnects leave the queue, TTFT predicted',
  async (t) => {
    const teardown = t.teardown.bind(t);
    const { workers } = await startSim(teardown, 2, SIM);
    const { url, adminUrl } = await startGateway(
      teardown,
      fleetConfig(
        workers,
        { strategy: 'least-load' },
        { flow: { enabled: true, saturation: { default: { prefillTokens: 1 } } } },
      ),
    );

    const sheddable = Array.from({ length: 6 }, (_, i) =>
      stream(url, `shed-${i}`, { 'x-kvgate-priority': 'sheddable', 'x-kvgate-tenant': 'batch' }),
    );
    await eventually(async () => (await debugFlow(adminUrl)).queued >= 4, 10_000, 20);
    const queuedView = await debugFlow(adminUrl);
    t.equal(queuedView.classes[2]!.name, 'sheddable');
    t.equal(queuedView.classes[2]!.queued, 4, 'two in prefill on the two workers, four held in the gateway');

    const aborter = new AbortController();
    const gone = stream(url, 'gone', { 'x-kvgate-priority': 'sheddable' }, 2000, aborter.signal).catch(() => 'aborted');
    await eventually(async () => (await debugFlow(adminUrl)).classes[2]!.tenants.anonymous === 1, 10_000, 20);
    aborter.abort();
    t.equal(await gone, 'aborted');
    let last: unknown;
    const afterAbort = await eventually(async () => {
      const f = await debugFlow(adminUrl);
      last = f.classes[2];
      return (f.classes[2]!.shed.disconnected ?? 0) === 1 && f.classes[2]!.tenants.anonymous === undefined && f;
    }).catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(last)}`);
    });
    t.equal(afterAbort.classes[2]!.shed.disconnected, 1, 'the disconnected request left the queue at once');

    const critical = Array.from({ length: 3 }, (_, i) =>
      stream(url, `crit-${i}`, { 'x-kvgate-priority': 'critical', 'x-kvgate-tenant': 'interactive' }),
    );
    const results = await Promise.all([...sheddable, ...critical]);
    for (const r of results) t.equal(r.status, 200, r.name);
    const order = [...results].sort((a, b) => a.firstByteAt - b.firstByteAt).map((r) => r.name);
    const lastCritical = Math.max(...['crit-0', 'crit-1', 'crit-2'].map((n) => order.indexOf(n)));
    t.ok(lastCritical <= 5, `the critical requests overtook the held sheddable ones: ${order.join(' ')}`);
    const ttft = (p: string) => results.filter((r) => r.name.startsWith(p)).map((r) => Math.round(r.ttftMs));
    t.comment(`TTFT ms: critical ${ttft('crit').join(', ')}; sheddable ${ttft('shed').join(', ')}`);
    const waits = results
      .filter((r) => r.name.startsWith('shed'))
      .map((r) => Number(/^class=sheddable; tenant=batch; wait_ms=(\d+)/.exec(r.flow ?? '')?.[1] ?? NaN));
    t.notOk(waits.some(Number.isNaN), `x-kvgate-flow on every response: ${results.map((r) => r.flow).join(' | ')}`);
    t.ok(waits.filter((w) => w > 0).length >= 4, `the held ones say how long they waited: ${waits.join(', ')}`);

    const final = await debugFlow(adminUrl);
    t.equal(final.queued, 0);
    t.ok(final.classes[2]!.admitted.queued >= 4, 'held sheddable requests were released');
    t.ok(final.classes[0]!.admitted.queued >= 1, 'critical requests were held too, and released first');
    const metrics = await (await request(`${url}/metrics`)).body.text();
    t.ok(
      (metricValue(metrics, 'kvgate_flow_admitted_total', { class: 'critical', tenant: 'interactive' }) ?? 0) >= 3,
      'admissions are counted by class and tenant',
    );
    t.equal(metricValue(metrics, 'kvgate_flow_shed_total', { class: 'sheddable', reason: 'disconnected' }), 1);

    const bad = await request(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-kvgate-priority': 'gold' },
      body: JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 1 }),
    });
    t.equal(bad.statusCode, 400);
    t.match(await bad.body.json(), { error: { param: 'x-kvgate-priority', type: 'invalid_request_error' } });

    // Then one request at a time: the predicted TTFT of the chosen worker (/debug/route) against the client's.
    const sizes = [100, 600, 250, 900, 400, 150, 750, 300, 500, 200, 800, 350];
    const errors: number[] = [];
    const rows: string[] = [];
    for (const [i, words] of sizes.entries()) {
      const body = { model: MODEL, prompt: prompt(words, `p${i}`), max_tokens: 2, stream: true };
      const dry = (await (
        await request(`${adminUrl}/debug/route`, { method: 'POST', body: JSON.stringify(body) })
      ).body.json()) as { worker: string; flow: { candidates: { worker: string; predictedTtftMs: number }[] } };
      const predicted = dry.flow.candidates.find((c) => c.worker === dry.worker)!.predictedTtftMs;
      const observed = (await stream(url, `p${i}`, {}, words)).ttftMs;
      rows.push(`${words * 5 + 4} chars: predicted ${predicted} ms, observed ${Math.round(observed)} ms`);
      // The first requests teach the model; judge it once it has seen a few.
      if (i >= 2) errors.push(Math.abs(predicted - observed) / observed);
    }
    errors.sort((a, b) => a - b);
    const median = errors[Math.floor(errors.length / 2)]!;
    const mean = errors.reduce((s, e) => s + e, 0) / errors.length;
    t.comment(rows.join('\n'));
    t.comment(
      `prediction error (2 warm-up requests on top of the first phase): median ${(median * 100).toFixed(1)}%, mean ${(mean * 100).toFixed(1)}%`,
    );
    const learned = (await debugFlow(adminUrl)).workers;
    t.comment(
      `learned: ${learned.map((w) => `${w.id} ${w.tokensPerSecond} tokens/s from ${w.observations} observations`).join('; ')}`,
    );
    t.equal(
      learned.reduce((n, w) => n + w.observations, 0),
      results.length + sizes.length,
      'every streamed first token taught the model',
    );
    // Loose on purpose: a loaded 2-core box adds its own jitter to every observed TTFT.
    t.ok(median < 0.5, `median relative error ${(median * 100).toFixed(1)}% under 50%`);
  },
);
