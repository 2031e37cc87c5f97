import t from 'tap';
import { argminRandomTie, leastInflight, leastLoaded } from '../../../../gateway/routing/strategies/pick.js';
import { ctx, seeded, shares, worker } from '../../../fixtures/strategy-fleet.js';

const byValue = (values: number[]) => (i: number, b: number) => values[i]! - values[b]!;

void t.test('argminRandomTie: the least wins, with the size of its tied set', (t) => {
  t.same(argminRandomTie(4, byValue([3, 1, 2, 5]), seeded(1)), { index: 1, ties: 1 });
  t.same(argminRandomTie(1, byValue([7]), seeded(1)), { index: 0, ties: 1 });
  const tied = argminRandomTie(5, byValue([4, 1, 9, 1, 1]), seeded(1));
  t.ok([1, 3, 4].includes(tied.index));
  t.equal(tied.ties, 3);
  t.end();
});

void t.test('argminRandomTie: exact ties are broken uniformly', (t) => {
  const random = seeded(5);
  const values = [2, 0, 0, 1, 0];
  const s = shares(30_000, () => String(argminRandomTie(values.length, byValue(values), random).index));
  t.same(Object.keys(s).sort(), ['1', '2', '4']);
  for (const k of ['1', '2', '4']) t.ok(Math.abs(s[k]! - 1 / 3) < 0.02, `${k}: ${s[k]!}`);
  t.end();
});

void t.test('argminRandomTie: skipped candidates take no part; none left is -1', (t) => {
  t.same(
    argminRandomTie(3, byValue([0, 5, 6]), seeded(1), (i) => i === 0),
    { index: 1, ties: 1 },
  );
  t.same(
    argminRandomTie(3, byValue([0, 5, 6]), seeded(1), () => true),
    { index: -1, ties: 0 },
  );
  t.same(argminRandomTie(0, byValue([]), seeded(1)), { index: -1, ties: 0 });
  t.end();
});

void t.test('argminRandomTie: draws only on ties, so a clear winner consumes no randomness', (t) => {
  let draws = 0;
  const random = () => {
    draws++;
    return 0.5;
  };
  argminRandomTie(4, byValue([4, 3, 2, 1]), random);
  t.equal(draws, 0);
  argminRandomTie(4, byValue([1, 1, 1, 1]), random);
  t.equal(draws, 3);
  t.end();
});

void t.test('leastLoaded looks at prefill tokens after requests; leastInflight only at requests', (t) => {
  const fleet = [
    worker('a', { inflightRequests: 1, prefillTokens: 500 }),
    worker('b', { inflightRequests: 1, prefillTokens: 100 }),
    worker('c', { inflightRequests: 2 }),
  ];
  t.equal(leastLoaded(ctx({ random: seeded(1) }), fleet).worker.id, 'b');
  const c = ctx({ random: seeded(3) });
  const s = shares(2_000, () => leastInflight(c, fleet).id);
  t.same(Object.keys(s).sort(), ['a', 'b']);
  t.end();
});
