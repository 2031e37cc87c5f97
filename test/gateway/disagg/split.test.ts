import t from 'tap';
import pino from 'pino';
import { RoutingPipeline, type Routed } from '../../../gateway/routing/pipeline.js';
import { PdSplit, splitRoles } from '../../../gateway/disagg/split.js';
import { disaggConfigSchema } from '../../../gateway/disagg/config.js';
import type { PromptBlocks } from '../../../gateway/routing/strategies/strategy.js';
import { chat, setup, workerConfig } from '../../fixtures/policy-setup.js';

/** The pipeline narrows a P/D-split pool to its decode side before the strategy chooses. */
const workers = [
  { ...workerConfig('p0'), role: 'prefill' as const },
  { ...workerConfig('d0'), role: 'decode' as const },
  { ...workerConfig('d1'), role: 'both' as const },
];

function splitPipeline(t: { teardown(fn: () => unknown): void }, enabled = true, blocks?: PromptBlocks) {
  const s = setup(t.teardown.bind(t), { strategy: 'round-robin' }, { workers });
  const split = new PdSplit(disaggConfigSchema.parse({ enabled }), s.fleet);
  let tokenized = 0;
  const pipeline = new RoutingPipeline({
    fleet: s.fleet,
    policy: s.policy,
    metrics: s.metrics,
    log: pino({ level: 'silent' }),
    sessionHeader: 'x-session-id',
    split: split.split,
    promptBlocks: blocks
      ? () => {
          tokenized++;
          return Promise.resolve(blocks);
        }
      : undefined,
    random: () => 0.5,
    now: () => 0,
  });
  let n = 0;
  const route = async (): Promise<Routed> => pipeline.route(chat(50), '/v1/chat/completions', {}, `r${n++}`);
  return { ...s, split, route, tokenized: () => tokenized };
}

void t.test('the strategy chooses among the decode side only; the prefill side rides along', async (t) => {
  const s = splitPipeline(t);
  const chosen = new Set<string>();
  for (let i = 0; i < 6; i++) {
    const r = await s.route();
    chosen.add(r.worker.id);
    t.same(
      r.candidates.map((w) => w.id),
      ['d0', 'd1'],
    );
    t.same(
      r.prefillCandidates?.map((w) => w.id),
      ['p0'],
    );
  }
  t.same([...chosen].sort(), ['d0', 'd1'], 'never the prefill worker');
  t.same(s.split.poolWorkers('default'), { prefill: 1, decode: 1, both: 1 });
});

void t.test('a prefill worker that is down leaves the pool split, with no prefill candidate', async (t) => {
  const s = splitPipeline(t);
  s.fleet.setHealthy(s.fleet.get('p0')!, false);
  const r = await s.route();
  t.same(r.prefillCandidates, []);
  t.not(r.worker.id, 'p0');
});

void t.test('disabled: no split, the strategy sees every worker', async (t) => {
  const s = splitPipeline(t, false);
  const r = await s.route();
  t.equal(r.prefillCandidates, undefined);
  t.same(
    r.candidates.map((w) => w.id),
    ['p0', 'd0', 'd1'],
  );
});

void t.test('a split pool is tokenized for the threshold even when the strategy needs no blocks', async (t) => {
  const blocks: PromptBlocks = { tokenCount: 64, blockSize: 16, hashes: [1n, 2n, 3n, 4n] };
  const s = splitPipeline(t, true, blocks);
  const r = await s.route();
  t.equal(s.tokenized(), 1);
  t.equal(r.ctx.blocks, blocks);
  t.equal(r.ctx.promptTokens, 64);
});

void t.test('splitRoles: with no decode-capable worker the prefill workers serve whole requests', (t) => {
  const p = { id: 'p', role: 'prefill' };
  t.same(splitRoles([p]), { prefill: [p], decode: [p] });
  t.end();
});

void t.test('a prefill worker that joins later splits the pool', async (t) => {
  const s = splitPipeline(t);
  t.equal(s.split.isSplit('m', undefined), true);
  s.fleet.remove('p0');
  t.equal(s.split.isSplit('m', undefined), false);
  t.equal((await s.route()).prefillCandidates, undefined);
  const p1 = s.fleet.add({ ...workerConfig('p1'), role: 'prefill' });
  s.fleet.setHealthy(p1, true);
  const r = await s.route();
  t.same(
    r.prefillCandidates?.map((w) => w.id),
    ['p1'],
  );
  t.same(s.split.poolWorkers('default'), { prefill: 1, decode: 1, both: 1 });
});
