import t, { type Test } from 'tap';
import { GatewayError } from '../../../gateway/front/errors.js';
import { RoutingSetupError } from '../../../gateway/routing/policy.js';
import type { PromptBlocks } from '../../../gateway/routing/strategies/strategy.js';
import { chat, route, setup, workerConfig } from '../../fixtures/policy-setup.js';

const FLEET = [
  workerConfig('a1', { gpu: 'a100' }),
  workerConfig('a2', { gpu: 'a100' }),
  workerConfig('h1', { gpu: 'h100' }),
  workerConfig('h2', { gpu: 'h100' }),
  workerConfig('lora', {}, ['m', 'sql-lora']),
];
const TOKEN = 'a-very-secret-admin-token';

const rejects = async (t: Test, p: Promise<unknown>, status: number, code: string, message: RegExp) => {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof GatewayError, `a GatewayError (${String(err)})`);
  const e = err as GatewayError;
  t.equal(e.status, status);
  t.equal(e.code, code);
  t.match(e.message, message);
  t.equal(typeof e.toJSON().error.message, 'string', 'OpenAI-style body');
};

t.test('without policies every request goes to the default strategy, arm none', async (t) => {
  const s = setup(t.teardown.bind(t), { strategy: 'round-robin' });
  const r = await route(s, chat());
  t.equal(r.strategy.name, 'round-robin');
  t.equal(r.selection.arm, 'none');
  t.equal(r.selection.rule, 'default');
  t.equal(r.selection.pool, undefined);
});

t.test('policies in order, first match wins; pools narrow the candidates', async (t) => {
  const s = setup(
    t.teardown.bind(t),
    {
      strategy: 'least-load',
      pools: { h100: { labels: { gpu: 'h100' } }, pair: { workers: ['a1', 'h1'] } },
      policies: [
        { name: 'gold', match: { headers: { 'x-tier': 'gold' } }, strategy: 'round-robin', pool: 'pair' },
        { name: 'long-context', match: { promptTokens: { min: 8000 } }, pool: 'h100' },
        { match: { headers: { 'x-tier': { prefix: 'gol' } } }, strategy: 'random' },
      ],
    },
    { workers: FLEET },
  );
  const gold = await route(s, chat(20_000), { 'x-tier': 'gold' });
  t.equal(gold.selection.rule, 'gold', 'the first matching policy wins even when a later one matches too');
  t.equal(gold.strategy.name, 'round-robin');
  t.same(
    gold.candidates.map((w) => w.id),
    ['a1', 'h1'],
  );

  const seen = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const r = await route(s, chat(9000));
    t.equal(r.selection.rule, 'long-context');
    t.equal(r.strategy.name, 'least-load', 'a policy without strategy keeps the default one');
    seen.add(r.worker.id);
    s.fleet.start(r.worker, 9000, 600);
  }
  t.same([...seen].sort(), ['h1', 'h2'], 'long prompts only ever reach the h100 pool');

  t.equal(
    (await route(s, chat(10), { 'x-tier': 'golden' })).selection.rule,
    'policies[2]',
    'unnamed policies are named by index',
  );
  t.equal((await route(s, chat(10))).selection.rule, 'default');
  const path = await route(s, chat(10), {}, '/v1/chat/completions?x=1');
  t.equal(path.selection.rule, 'default');

  for (const w of s.fleet.workers) if (w.labels.gpu === 'h100') s.fleet.setHealthy(w, false);
  await rejects(
    t,
    route(s, chat(9000)),
    503,
    'no_healthy_worker',
    /no healthy worker in pool 'h100' \(long-context\) serves model 'm'/,
  );
});

t.test('model routing: the model field picks the workers serving it; LoRA names count as models', async (t) => {
  const s = setup(t.teardown.bind(t), { strategy: 'round-robin' }, { workers: FLEET });
  for (let i = 0; i < 5; i++) t.equal((await route(s, chat(10, 'sql-lora'))).worker.id, 'lora');
  const ids = new Set<string>();
  for (let i = 0; i < 10; i++) ids.add((await route(s, chat(10))).worker.id);
  t.equal(ids.size, 5);
  await rejects(t, route(s, chat(10, 'nope')), 404, 'model_not_found', /The model 'nope' does not exist/);
  const policy = setup(
    t.teardown.bind(t),
    { policies: [{ match: { model: 'sql-*' }, strategy: 'random' }] },
    { workers: FLEET },
  );
  t.equal((await route(policy, chat(10, 'sql-lora'))).strategy.name, 'random', 'model globs match adapter names');
});

t.test('prompt length: the estimate by default, exact tokens when a rule asks for them', async (t) => {
  const blocks = (tokenCount: number): PromptBlocks => ({ tokenCount, blockSize: 16, hashes: [] });
  let tokenized = 0;
  const provider = async () => {
    tokenized++;
    return blocks(9000);
  };
  const routing = (exact: boolean) => ({
    policies: [{ name: 'long', match: { promptTokens: { min: 8000, exact } }, strategy: 'random' }],
  });
  const estimate = setup(t.teardown.bind(t), routing(false), { promptBlocks: provider });
  const short = estimate.pipeline.route(chat(100), '/v1/chat/completions', {}, 'r');
  t.notOk(short instanceof Promise, 'estimates keep routing synchronous');
  t.equal((await short).selection.rule, 'default');
  t.equal(tokenized, 0);

  const exact = setup(t.teardown.bind(t), routing(true), { promptBlocks: provider });
  t.ok(exact.policy.needsExactTokens);
  const r = await route(exact, chat(100));
  t.equal(tokenized, 1);
  t.equal(r.selection.rule, 'long', 'the exact count (9000) decides, not the estimate (100)');
  t.equal(r.ctx.promptTokens, 9000);
  t.equal(r.ctx.blocks?.tokenCount, 9000, 'the blocks are kept for the strategy');

  const none = setup(t.teardown.bind(t), routing(true));
  t.equal((await route(none, chat(100))).selection.rule, 'default', 'without a tokenizer the estimate is used');
});

t.test('x-kvgate-strategy: ignored unless allowed; unknown names are a 400', async (t) => {
  const off = setup(t.teardown.bind(t), { strategy: 'least-load' });
  t.equal(
    (await route(off, chat(), { 'x-kvgate-strategy': 'random' })).strategy.name,
    'least-load',
    'disabled: the header is ignored',
  );
  const on = setup(t.teardown.bind(t), { strategy: 'least-load', overrides: { strategyHeader: true } });
  const forced = await route(on, chat(), { 'x-kvgate-strategy': 'round-robin' });
  t.equal(forced.strategy.name, 'round-robin');
  t.equal(forced.selection.rule, 'override:strategy');
  t.equal(
    (await route(on, chat(), { 'x-kvgate-strategy': 'round-robin' })).strategy,
    forced.strategy,
    'one instance per forced name',
  );
  t.equal((await route(on, chat(), { 'x-kvgate-strategy': 'least-load' })).strategy.name, 'least-load');
  await rejects(
    t,
    route(on, chat(), { 'x-kvgate-strategy': 'fastest' }),
    400,
    'unknown_strategy',
    /x-kvgate-strategy: unknown strategy 'fastest' \(known: .*round-robin/,
  );
});

t.test('x-kvgate-worker: only with the admin token, only configured and available workers', async (t) => {
  t.throws(
    () => setup(t.teardown.bind(t), { overrides: { workerHeader: true } }),
    RoutingSetupError,
    'needs admin.token',
  );
  t.throws(
    () => setup(t.teardown.bind(t), { overrides: { workerHeader: true } }),
    /routing\.overrides\.workerHeader: needs admin\.token/,
  );

  const off = setup(t.teardown.bind(t), { strategy: 'least-load' }, { workers: FLEET, adminToken: TOKEN });
  t.equal(
    (await route(off, chat(), { 'x-kvgate-worker': 'h2', 'x-kvgate-admin-token': TOKEN })).selection.rule,
    'default',
    'disabled: ignored',
  );

  const s = setup(
    t.teardown.bind(t),
    { strategy: 'least-load', overrides: { workerHeader: true } },
    { workers: FLEET, adminToken: TOKEN },
  );
  for (let i = 0; i < 3; i++) {
    const r = await route(s, chat(), { 'x-kvgate-worker': 'h2', 'x-kvgate-admin-token': TOKEN });
    t.equal(r.worker.id, 'h2');
    t.equal(r.strategy.name, 'pinned');
  }
  await rejects(
    t,
    route(s, chat(), { 'x-kvgate-worker': 'h2' }),
    403,
    'invalid_admin_token',
    /needs a valid x-kvgate-admin-token/,
  );
  await rejects(
    t,
    route(s, chat(), { 'x-kvgate-worker': 'h2', 'x-kvgate-admin-token': 'wrong' }),
    403,
    'invalid_admin_token',
    /admin-token/,
  );
  await rejects(
    t,
    route(s, chat(), { 'x-kvgate-worker': 'http://evil:80', 'x-kvgate-admin-token': TOKEN }),
    400,
    'unknown_worker',
    /unknown worker 'http:\/\/evil:80'/,
  );
  await rejects(
    t,
    route(s, chat(10, 'sql-lora'), { 'x-kvgate-worker': 'h2', 'x-kvgate-admin-token': TOKEN }),
    400,
    'worker_unavailable',
    /does not serve model 'sql-lora'/,
  );
  s.fleet.setHealthy(s.fleet.get('h2')!, false);
  await rejects(
    t,
    route(s, chat(), { 'x-kvgate-worker': 'h2', 'x-kvgate-admin-token': TOKEN }),
    400,
    'worker_unavailable',
    /'h2' is not available/,
  );
});

t.test('the session header can be switched off', async (t) => {
  const on = setup(t.teardown.bind(t), {});
  t.equal((await route(on, chat(), { 'x-session-id': 's1' })).ctx.sessionKey, 's1');
  const custom = setup(t.teardown.bind(t), { sessionHeader: 'X-Conversation' });
  t.equal((await route(custom, chat(), { 'x-conversation': 'c9' })).ctx.sessionKey, 'c9');
  const off = setup(t.teardown.bind(t), { overrides: { session: false } });
  t.equal((await route(off, chat(), { 'x-session-id': 's1' })).ctx.sessionKey, undefined);
});

t.test('pools that need the fleet to check fail at start-up with one line', async (t) => {
  t.throws(() => setup(t.teardown.bind(t), { pools: { big: { labels: { gpu: 'b200' } } } }, { workers: FLEET }), {
    message:
      'kvgate: routing.pools.big.labels: no worker has labels gpu=b200; an empty pool could never serve a request',
  });
  t.throws(
    () => setup(t.teardown.bind(t), { pools: { p: { workers: ['a1', 'zz'] } } }, { workers: FLEET }),
    /^kvgate: routing\.pools\.p\.workers: unknown worker 'zz' \(workers: a1, a2, h1, h2, lora\)$/,
  );
});

t.test('experiments: policies carve out traffic first, then the experiment splits the rest by arm', async (t) => {
  const s = setup(t.teardown.bind(t), {
    strategy: 'least-load',
    policies: [{ name: 'long', match: { promptTokens: { min: 8000 } }, strategy: 'random' }],
    experiments: [
      {
        name: 'kv-vs-rr',
        match: { model: 'm', path: '/v1/chat/*' },
        stickyBy: 'session',
        arms: [
          { name: 'kv', strategy: 'kv', weight: 1 },
          { name: 'rr', strategy: 'round-robin', weight: 1 },
        ],
      },
    ],
  });
  t.equal((await route(s, chat(9000), { 'x-session-id': 's' })).selection.rule, 'long');
  const arms = new Map<string, string>();
  for (let i = 0; i < 40; i++) {
    const r = await route(s, chat(), { 'x-session-id': `s${i % 10}` });
    t.equal(r.selection.rule, 'experiment:kv-vs-rr');
    t.equal(r.strategy.name, r.selection.arm === 'kv' ? 'kv' : 'round-robin');
    const before = arms.get(`s${i % 10}`);
    if (before) t.equal(r.selection.arm, before, 'sticky by session');
    arms.set(`s${i % 10}`, r.selection.arm);
  }
  t.same(new Set(arms.values()), new Set(['kv', 'rr']), 'both arms get sessions');
  const other = await route(s, chat(), { 'x-session-id': 's1' }, '/v1/completions');
  t.equal(other.selection.rule, 'default', 'a request the experiment does not match falls through to the default');
  t.equal(other.selection.arm, 'none');
});

t.test(
  'a decision turn (replicas deciding in arrival order) holds the choice, then decides on the load then',
  async (t) => {
    let release = () => {};
    let blocked = true;
    const done: string[] = [];
    const s = setup(
      t.teardown,
      { strategy: 'least-load' },
      {
        decisionTurn: (arrivedAt) => ({
          wait: () => (blocked ? new Promise<void>((r) => (release = r)) : undefined),
          done: () => void done.push(String(arrivedAt)),
        }),
      },
    );
    const pending = route(s, chat());
    // Meanwhile another replica's earlier request lands on w0 and w1: the held decision must see it.
    s.fleet.start(s.fleet.get('w0')!, 10, 1);
    s.fleet.start(s.fleet.get('w1')!, 10, 1);
    t.same(done, [], 'the turn is not over before the decision');
    release();
    const routed = await pending;
    t.equal(routed.worker.id, 'w2', 'chose on the load as it was after the wait');
    t.equal(done.length, 1, 'the turn ended with the decision');
    blocked = false;
    const sync = s.pipeline.route(chat(), '/v1/chat/completions', {}, 'now');
    t.notOk(sync instanceof Promise, 'nobody to wait for: the common path stays synchronous');
    t.equal(done.length, 2);
    t.throws(() => s.pipeline.route(chat(10, 'no-such-model'), '/v1/chat/completions', {}, 'bad'), /does not exist/);
    t.equal(done.length, 3, 'a refused request ends its turn too');
  },
);
