import t from 'tap';
import { FLEET_DEFAULTS } from '../../../bench/replay/replay.js';
import { loadArithmetic, prefillRatePerWorker, uncachedTokens, waterLevel } from '../../../bench/replay/tenant-load.js';
import type { TraceRequest } from '../../../bench/replay/trace.js';

t.test('water level: everyone below it gets all they ask, the rest share what is left equally', async (t) => {
  t.equal(waterLevel([1, 2, 3], 10), Infinity, 'everything fits');
  t.equal(waterLevel([1, 2, 30], 10), 7, '1 and 2 served, 7 left for the big one');
  t.equal(waterLevel([5, 5, 5, 5], 8), 2, 'all above: an equal split');
  t.equal(waterLevel([1, 9], 0), 0);
});

t.test('uncached tokens: the leading run of blocks sent before is free, the last token always computed', async (t) => {
  const req = (timestamp: number, inputLength: number, hashIds: number[]): TraceRequest => ({
    timestamp,
    inputLength,
    outputLength: 1,
    hashIds,
  });
  t.same(
    uncachedTokens([req(0, 1024, [1, 2]), req(1, 1536, [1, 2, 3]), req(2, 1024, [1, 9]), req(3, 1024, [1, 2])]),
    [1024, 512, 512, 1],
  );
});

t.test('class-first fair shares over the fleet capacity', async (t) => {
  // Two arrivals 10 s apart, 55k uncached tokens each (distinct blocks): 11k tokens/s offered.
  const block = (i: number) => Array.from({ length: 108 }, (_, j) => i * 1000 + j);
  const trace: TraceRequest[] = [
    { timestamp: 0, inputLength: 55_000, outputLength: 1, hashIds: block(1) },
    { timestamp: 10_000, inputLength: 55_000, outputLength: 1, hashIds: block(2) },
  ];
  const labels = [
    { tenant: 'noisy', cls: 'critical' },
    { tenant: 'quiet', cls: 'sheddable' },
  ];
  const fleet = { ...FLEET_DEFAULTS, workers: 1 };
  const a = loadArithmetic(trace, labels, ['critical', 'sheddable'], fleet, { perWorker: 6000, source: 'test' });
  t.equal(a.capacity, 6000);
  t.equal(a.offered, 11_000);
  t.equal(a.classes[0]!.level, Infinity, 'critical fits');
  t.equal(a.classes[1]!.left, 500, 'sheddable gets what critical leaves');
  t.same(a.classes[1]!.tenants.quiet, { demand: 5500, share: 500 });
  t.equal(a.windows.length, 1);
  t.ok(prefillRatePerWorker(FLEET_DEFAULTS) > 5000 && prefillRatePerWorker(FLEET_DEFAULTS) < 6000, 'about 5.5k');
});
