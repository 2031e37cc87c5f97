import t from 'tap';
import { ArmStats, Experiment, TTFT_WINDOW, unitHash, type Arm } from '../../../gateway/routing/experiments.js';
import type { Strategy } from '../../../gateway/routing/strategies/strategy.js';
import { seeded } from '../../fixtures/strategy-fleet.js';

const strategy = (name: string): Strategy => ({
  name,
  choose: () => {
    throw new Error('unused');
  },
});
const arm = (name: string, weight: number): Arm => ({ name, strategy: strategy(name), weight, stats: new ArmStats() });
const experiment = (arms: Arm[], stickyBy: Experiment['stickyBy'] = 'session', name = 'exp') =>
  new Experiment({ name, match: () => true, arms, stickyBy, pool: undefined, shadow: undefined });

t.test('the hash is fixed: FNV-1a over UTF-8 then fmix32, the same in every process', async (t) => {
  // Pinned values (checked against an independent implementation): a change here moves every sticky client to another arm.
  const pinned: [string, number][] = [
    ['', 0.6689221884589642],
    ['a', 0.10352621669881046],
    ['exp\0user-1', 0.9949271180666983],
    ['kv-vs-rr\0session-é', 0.8306162916123867],
    ['x\0😀', 0.11383106256835163],
  ];
  for (const [s, v] of pinned) t.equal(unitHash(s), v, JSON.stringify(s));
});

t.test('same key, same arm; the experiment name salts the hash', async (t) => {
  const e = experiment([arm('a', 1), arm('b', 1)]);
  const never = () => {
    throw new Error('a sticky key never draws');
  };
  for (let i = 0; i < 200; i++) {
    const key = `session-${i}`;
    t.equal(e.assign(key, never).name, e.assign(key, never).name);
  }
  const other = experiment([arm('a', 1), arm('b', 1)], 'session', 'other');
  let differ = 0;
  for (let i = 0; i < 200; i++) if (e.assign(`k${i}`, never).name !== other.assign(`k${i}`, never).name) differ++;
  t.ok(differ > 50 && differ < 150, `${differ}/200 keys land differently in another experiment`);
});

t.test('weights are respected within tolerance over 10,000 keys', async (t) => {
  for (const weights of [
    [50, 50],
    [90, 10],
    [1, 2, 7],
  ]) {
    const arms = weights.map((w, i) => arm(`arm${i}`, w));
    const e = experiment(arms);
    const counts = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const a = e.assign(`user-${i}`, Math.random);
      counts.set(a.name, (counts.get(a.name) ?? 0) + 1);
    }
    const total = weights.reduce((s, w) => s + w, 0);
    weights.forEach((w, i) => {
      const share = (counts.get(`arm${i}`) ?? 0) / 10_000;
      t.ok(
        Math.abs(share - w / total) < 0.02,
        `weights ${weights.join('/')}: arm${i} got ${share}, expected ${w / total}`,
      );
    });
  }
});

t.test('without a key the arm is drawn per request with the injected random', async (t) => {
  const e = experiment([arm('a', 1), arm('b', 3)], 'none');
  t.equal(e.keyOf({ sessionKey: 's', headers: { 'x-user': 'u' }, clientAddress: '1.2.3.4' }), undefined);
  t.equal(e.assign(undefined, () => 0.2).name, 'a');
  t.equal(e.assign(undefined, () => 0.3).name, 'b');
  const random = seeded(3);
  let b = 0;
  for (let i = 0; i < 4000; i++) if (e.assign(undefined, random).name === 'b') b++;
  t.ok(Math.abs(b / 4000 - 0.75) < 0.03, `b share ${b / 4000}`);
});

t.test('sticky keys: session, a chosen header, the client address', async (t) => {
  const input = { sessionKey: 's1', headers: { 'x-user-id': 'u1' }, clientAddress: '10.0.0.9' };
  t.equal(experiment([arm('a', 1)], 'session').keyOf(input), 's1');
  t.equal(experiment([arm('a', 1)], { header: 'x-user-id' }).keyOf(input), 'u1');
  t.equal(experiment([arm('a', 1)], { header: 'x-other' }).keyOf(input), undefined);
  t.equal(experiment([arm('a', 1)], 'client-address').keyOf(input), '10.0.0.9');
  t.equal(
    experiment([arm('a', 1)], 'session').keyOf({ ...input, sessionKey: '' }),
    undefined,
    'an empty key is no key',
  );
});

t.test('arm stats: mean over all, percentiles over a bounded window, cache-hit ratio, 5xx as errors', async (t) => {
  const s = new ArmStats();
  t.same(s.summary(), {
    requests: 0,
    errors: 0,
    errorRate: null,
    ttftMs: { count: 0, mean: null, p50: null, p90: null },
    cacheHitRatio: null,
    cachedTokens: 0,
    promptTokens: 0,
    predictedCachedTokens: 0,
  });
  for (let i = 1; i <= 10; i++) s.firstToken(i / 1000);
  for (const status of [200, 200, 400, 499, 502]) s.end(status);
  s.usage(1000, 250);
  s.usage(1000, 750);
  const sum = s.summary() as {
    requests: number;
    errors: number;
    errorRate: number;
    ttftMs: Record<string, number>;
    cacheHitRatio: number;
  };
  t.equal(sum.requests, 5);
  t.equal(sum.errors, 1, "only the 502 is the arm's error");
  t.equal(sum.errorRate, 0.2);
  t.same(sum.ttftMs, { count: 10, mean: 5.5, p50: 5, p90: 9 });
  t.equal(sum.cacheHitRatio, 0.5);
  const big = new ArmStats();
  for (let i = 0; i < TTFT_WINDOW * 3; i++) big.firstToken(i < TTFT_WINDOW * 2 ? 100 : 0.001);
  t.equal(big.ttftPercentile(0.9), 0.001, 'percentiles forget old samples');
  t.equal(big.ttftCount, TTFT_WINDOW * 3);
});

t.test('the summary names a leader per measure once every arm has data', async (t) => {
  const fast = arm('fast', 1);
  const slow = arm('slow', 1);
  const e = experiment([fast, slow]);
  t.same((e.summary() as { leader: unknown }).leader, { ttftP50: null, ttftP90: null, cacheHitRatio: null });
  fast.stats.firstToken(0.01);
  slow.stats.firstToken(0.5);
  fast.stats.usage(100, 10);
  slow.stats.usage(100, 90);
  const s = e.summary() as {
    leader: Record<string, string>;
    arms: { name: string; share: number; strategy: string }[];
  };
  t.same(s.leader, { ttftP50: 'fast', ttftP90: 'fast', cacheHitRatio: 'slow' });
  t.same(
    s.arms.map((a) => [a.name, a.share, a.strategy]),
    [
      ['fast', 0.5, 'fast'],
      ['slow', 0.5, 'slow'],
    ],
  );
});
