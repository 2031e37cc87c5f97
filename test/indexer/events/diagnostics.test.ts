import t from 'tap';
import { SourceDiagnostics } from '../../../indexer/events/diagnostics.js';

t.test('warnings are rate-limited per source; the next one says how many were suppressed', async (t) => {
  let now = 0;
  const lines: { obj: Record<string, unknown>; msg: string }[] = [];
  const log = { warn: (obj: Record<string, unknown>, msg: string) => lines.push({ obj, msg }) };
  const d = new SourceDiagnostics('w1', log as never, () => now, { burst: 3, windowMs: 1000 });
  for (let i = 0; i < 12_000; i++) d.warn({ i }, 'undecodable');
  t.equal(lines.length, 3, '12,000 garbage payloads, 3 log lines');
  t.equal(d.suppressedWarnings, 11_997);
  now = 1000;
  d.warn({ i: 'next' }, 'undecodable');
  t.equal(lines.length, 4);
  t.equal(lines[3]!.obj.suppressed, 11_997);
  t.equal(lines[3]!.obj.worker, 'w1');
  d.warn({}, 'again');
  t.equal(lines[4]!.obj.suppressed, undefined, 'counted once');
});

t.test('an absurd engine timestamp gives no lag and is counted', async (t) => {
  const d = new SourceDiagnostics('w1', undefined, () => 0);
  const now = 1_800_000_000_000;
  t.equal(d.lagMs(now, now / 1000 - 0.25), 250);
  t.equal(d.lagMs(now, 1e300), null);
  t.equal(d.lagMs(now, -1), null);
  t.equal(d.lagMs(now, 0), null, 'the epoch is not a timestamp an engine sends');
  t.equal(d.lagMs(now, Number.NaN), null);
  t.equal(d.ignoredTimestamps, 4);
});

t.test('skips add up by reason', async (t) => {
  const d = new SourceDiagnostics('w1', undefined, () => 0);
  d.addSkips({ malformed: 2, foreign: 1 });
  d.addSkips({ malformed: 1 });
  d.skip('bad-seq');
  t.strictSame(d.skipped, { malformed: 3, foreign: 1, 'bad-seq': 1 });
  t.equal(d.skippedTotal, 5);
});
