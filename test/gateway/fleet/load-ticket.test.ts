import t from 'tap';
import { Fleet, type WorkerConfig } from '../../../gateway/fleet/fleet.js';

const worker = (id: string): WorkerConfig => ({
  id,
  url: `http://127.0.0.1:1/${id}`,
  models: ['m'],
  role: 'both',
  labels: {},
  kvEvents: undefined,
});

t.test('a load ticket records the uncached prompt and the block hashes, and gives both back', async (t) => {
  const fleet = new Fleet([worker('a')]);
  const w = fleet.workers[0]!;
  const shared = [1n, 2n, 3n, 4n];
  // 80-token prompts (5 blocks), 4 of them predicted cached on the first, none on the second; 3 output blocks each.
  const one = fleet.start(w, 80, 8, { uncachedTokens: 16, hashes: [...shared, 10n], promptBlocks: 5 });
  const two = fleet.start(w, 80, 8, { uncachedTokens: 80, hashes: [...shared, 11n], promptBlocks: 5 });
  t.equal(w.load.prefillTokens, 160, 'the whole prompts stay readable');
  t.equal(w.active.prefillUncachedTokens, 96, 'and the uncached parts beside them');
  t.equal(w.active.uniqueBlocks, 6, 'a shared prefix counts once');
  t.equal(w.active.outputBlocks, 6);
  t.ok(w.active.has(10n) && w.active.has(1n));

  fleet.firstToken(one);
  t.equal(w.active.prefillUncachedTokens, 80, 'the uncached part leaves at the first token');
  t.equal(w.active.uniqueBlocks, 6, 'blocks stay until the request ends');
  fleet.finish(one);
  fleet.finish(one);
  t.equal(w.active.uniqueBlocks, 5, 'the shared prefix stays while another request holds it');
  t.notOk(w.active.has(10n));
  fleet.finish(two);
  t.same([w.active.prefillUncachedTokens, w.active.uniqueBlocks, w.active.outputBlocks], [0, 0, 0]);
  t.equal(w.load.inflightRequests, 0);
});

t.test('without prompt details a ticket counts the whole prompt as uncached and holds no blocks', async (t) => {
  const fleet = new Fleet([worker('a')]);
  const w = fleet.workers[0]!;
  const ticket = fleet.start(w, 100, 9);
  t.equal(ticket.uncachedTokens, 100);
  t.equal(w.active.prefillUncachedTokens, 100);
  t.equal(w.active.uniqueBlocks, 0);
  fleet.finish(ticket);
  t.equal(w.active.prefillUncachedTokens, 0);
});

t.test('the prefill still to compute: the line less the progress on its head, never beyond it', async (t) => {
  const fleet = new Fleet([worker('a')]);
  const w = fleet.workers[0]!;
  const now = performance.now();
  const first = fleet.start(w, 12_000, 0, { uncachedTokens: 10_000 });
  const second = fleet.start(w, 5_000, 0, { uncachedTokens: 5_000 });
  t.equal(w.active.prefillRemaining(now, 0), 15_000, 'at no speed, the whole line');
  t.equal(
    w.active.prefillRemaining(now + 1e6, 10),
    5_000,
    'however long it has been busy, only the head is in progress',
  );
  const mid = w.active.prefillRemaining(performance.now() + 500, 10);
  t.ok(mid > 9_000 && mid <= 10_000, `half a second at 10 tokens/ms: about 5,000 done on the head (${mid} left)`);
  fleet.firstToken(first);
  t.equal(w.active.prefillRemaining(now + 1e6, 10), 0, 'the head left; the next one is counted as done too');
  t.equal(w.active.prefillRemaining(performance.now(), 10) <= 5_000, true);
  fleet.finish(second);
  t.equal(w.active.prefillRemaining(now + 1e6, 10), 0, 'an empty line');
  const again = fleet.start(w, 3_000, 0, { uncachedTokens: 3_000 });
  t.equal(w.active.prefillRemaining(performance.now(), 10) > 2_900, true, 'a new busy period starts from nothing done');
  fleet.finish(again);
});
