import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/**
 * LoRA adapters as a fleet operation, end to end: simulated vLLM workers with
 * runtime LoRA routes and KV events, the gateway with KV-aware routing.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const TOKEN = 'lora-admin-token-0123456789';
const ADAPTER = 'sql-lora';
const SYSTEM = 'You translate questions about the warehouse into SQL. '.repeat(60);

interface Outcome {
  worker: string;
  outcome: string;
  status: number | null;
  message: string;
}

/** The fields of the answers this test reads (OpenAI errors, admin results, model lists, chat completions). */
interface Body {
  error?: { message: string; type: string; code: string | null; param: string | null };
  results?: Outcome[];
  loadedOn?: string[];
  workers?: Record<string, string[] | null>;
  data?: { id: string; parent: string | null }[];
  model?: string;
  choices?: { message: { content: string } }[];
  usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  index?: { workers?: Record<string, { index?: { blocks: number } }> };
  predictedCachedBlocks?: number;
}

interface Answer {
  status: number;
  json: Body;
  headers: Record<string, string | string[] | undefined>;
}

const call = async (url: string, method: string, body?: unknown, token?: string): Promise<Answer> => {
  const res = await request(url, {
    method: method as 'GET' | 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.body.text();
  let json: Body = {};
  try {
    json = JSON.parse(text) as Body;
  } catch {
    /* plain text (vLLM's LoRA success answers) */
  }
  return { status: res.statusCode, json, headers: res.headers };
};

void t.test('LoRA load/unload across a pool; adapter traffic follows the adapter and keeps its cache', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '20', ...EVENTS]);
  const ids = workers.map((w) => w.worker);
  const { url, adminUrl } = await startGateway(
    teardown,
    fleetConfig(
      workers,
      { strategy: 'kv', pools: { tuned: { workers: [ids[0], ids[1]] } } },
      {
        admin: { host: '127.0.0.1', token: TOKEN },
        lora: { refreshIntervalMs: 500 },
        server: { host: '127.0.0.1', passthrough: { allowAdminRoutes: ['/reset_prefix_cache'] } },
      },
    ),
  );
  const admin = (path: string, body?: unknown) => call(`${adminUrl}${path}`, body ? 'POST' : 'GET', body, TOKEN);
  const simAdapters = async (url: string) =>
    ((await call(`${url}/v1/models`, 'GET')).json.data ?? []).filter((c) => c.parent !== null).map((c) => c.id);

  void t.test('the public port refuses state-changing engine routes, naming them', async (t) => {
    for (const path of ['/v1/load_lora_adapter', '/v1/unload_lora_adapter', '/sleep', '/collective_rpc']) {
      const r = await call(`${url}${path}`, 'POST', { lora_name: 'evil', lora_path: '/etc' });
      t.equal(r.status, 403, path);
      t.match(r.json, { error: { type: 'permission_error', code: 'admin_route_refused', param: null } });
      t.match(r.json.error?.message, `POST ${path} changes engine state`);
    }
    const unknown = await call(`${url}/v1/made_up_route`, 'GET');
    t.equal(unknown.status, 404, 'an unknown route is not forwarded either');
    t.match(unknown.json.error?.message, 'GET /v1/made_up_route');
    const opened = await call(`${url}/reset_prefix_cache`, 'POST');
    t.equal(opened.status, 200, 'a route the config opens goes through');
    t.equal(opened.headers['x-kvgate-strategy'], 'passthrough');
    const tokenize = await call(`${url}/tokenize`, 'POST', { model: MODEL, prompt: 'hi' });
    t.equal(tokenize.status, 200, 'per-request routes still go through');
    for (const w of workers) t.same(await simAdapters(w.url), [], `${w.worker}: nothing was loaded`);
    t.equal((await call(`${adminUrl}/lora/load`, 'POST', { lora_name: 'x', lora_path: '/x' })).status, 401);
  });

  void t.test('bad admin input is a 400 naming the field', async (t) => {
    const noPath = await admin('/lora/load', { lora_name: ADAPTER, pool: 'tuned' });
    t.equal(noPath.status, 400);
    t.equal(noPath.json.error?.param, 'lora_path');
    const badPool = await admin('/lora/load', { lora_name: ADAPTER, lora_path: '/a', pool: 'nope' });
    t.equal(badPool.status, 400);
    t.match(badPool.json.error?.message, "unknown pool 'nope'");
    const badWorker = await admin('/lora/unload', { lora_name: ADAPTER, workers: ['sim-9'] });
    t.match(badWorker.json.error?.message, "unknown worker 'sim-9'");
  });

  const home = { id: '' };
  let turn = 0;
  let messages: { role: string; content: string }[] = [{ role: 'system', content: SYSTEM }];
  const chat = async (model = ADAPTER) => {
    messages = [...messages, { role: 'user', content: `Question ${++turn}: how many orders shipped late?` }];
    const r = await call(`${url}/v1/chat/completions`, 'POST', { model, messages, max_tokens: 8 });
    const reply = r.json.choices?.[0]!.message.content;
    if (reply !== undefined) messages = [...messages, { role: 'assistant', content: reply }];
    return r;
  };
  const indexed = async (worker: string) => {
    return (await admin('/debug/workers')).json.index?.workers?.[worker]?.index?.blocks ?? 0;
  };

  void t.test(
    'loading on a pool: only its workers serve the adapter, and a conversation keeps its cache',
    async (t) => {
      const loaded = await admin('/lora/load', { lora_name: ADAPTER, lora_path: '/adapters/sql', pool: 'tuned' });
      t.equal(loaded.status, 200);
      t.same(
        loaded.json.results?.map((r) => [r.worker, r.outcome]),
        [
          [ids[0], 'loaded'],
          [ids[1], 'loaded'],
        ],
      );
      t.same(loaded.json.loadedOn, [ids[0], ids[1]]);
      t.same(await simAdapters(workers[2]!.url), [], 'the worker outside the pool has no adapter');
      const again = await admin('/lora/load', { lora_name: ADAPTER, lora_path: '/adapters/sql', workers: [ids[0]] });
      t.equal(again.status, 200);
      t.equal(again.json.results?.[0]!.outcome, 'already_loaded');

      const models = (await call(`${url}/v1/models`, 'GET')).json.data ?? [];
      t.ok(
        models.some((m) => m.id === ADAPTER && m.parent === MODEL),
        'the fleet model list shows the adapter and its parent',
      );

      for (let i = 0; i < 4; i++) {
        const r = await chat();
        t.equal(r.status, 200);
        const worker = r.headers['x-kvgate-worker'] as string;
        t.ok(worker === ids[0] || worker === ids[1], `turn ${turn} went to ${worker}, a worker with the adapter`);
        t.equal(r.json.model, ADAPTER);
        if (i === 0) home.id = worker;
        else {
          t.equal(worker, home.id, `turn ${turn} stays where its prefix is cached`);
          const predicted = Number(r.headers['x-kvgate-cached-blocks']);
          const cached = r.json.usage?.prompt_tokens_details.cached_tokens ?? -1;
          t.ok(predicted > 20, `turn ${turn}: ${predicted} blocks predicted`);
          t.equal(predicted, cached / 16, `turn ${turn}: predicted blocks = engine cached tokens / block size`);
        }
        await eventually(async () => (await indexed(worker)) >= Math.floor((r.json.usage?.prompt_tokens ?? 0) / 16));
      }

      const base = await call(`${adminUrl}/debug/route`, 'POST', { model: MODEL, messages, max_tokens: 8 }, TOKEN);
      t.equal(base.status, 200);
      t.equal(base.json.predictedCachedBlocks ?? 0, 0, "the base model matches none of the adapter's blocks");
    },
  );

  void t.test("unloading from one worker moves the adapter's traffic to the other", async (t) => {
    const gone = await admin('/lora/unload', { lora_name: ADAPTER, workers: [home.id] });
    t.equal(gone.status, 200);
    t.same(gone.json.results, [
      {
        worker: home.id,
        outcome: 'unloaded',
        status: 200,
        message: `Success: LoRA adapter '${ADAPTER}' removed successfully.`,
      },
    ]);
    const other = home.id === ids[0] ? ids[1] : ids[0];
    t.same(gone.json.loadedOn, [other]);
    for (let i = 0; i < 3; i++) {
      const r = await chat();
      t.equal(r.status, 200);
      t.equal(r.headers['x-kvgate-worker'], other, `turn ${turn} goes to ${other}, the only worker with the adapter`);
    }
    const snapshot = await admin('/lora');
    t.same(snapshot.json.workers?.[other!], [ADAPTER]);
    t.same(snapshot.json.workers?.[home.id], []);
  });

  void t.test('an adapter no worker has loaded is a 404 naming it', async (t) => {
    const unknown = await call(`${url}/v1/chat/completions`, 'POST', {
      model: 'never-loaded-lora',
      messages: [{ role: 'user', content: 'hi' }],
    });
    t.equal(unknown.status, 404);
    t.match(unknown.json.error, { code: 'model_not_found', param: 'model' });
    t.match(unknown.json.error?.message, 'never-loaded-lora');

    const all = await admin('/lora/unload', { lora_name: ADAPTER });
    t.equal(all.status, 200);
    t.same(
      all.json.results?.map((r) => r.outcome).sort(),
      ['not_loaded', 'not_loaded', 'unloaded'],
      'unloading fleet-wide reports the workers that had nothing to unload',
    );
    const r = await chat();
    t.equal(r.status, 404);
    t.equal(r.json.error?.message, `The LoRA adapter '${ADAPTER}' is not loaded on any worker`);
  });
});
