import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { analyseRow, readRows } from '../../bench/replicas-decisions.js';

// A trace line; `local` and `seen` flat, [in-flight, prefill tokens, decode blocks] per worker in turn.
const line = (t: number, r: string, id: number, w: string, d: number[], local: number[], seen: number[]) => {
  const perWorker = (xs: number[]) => Array.from({ length: xs.length / 3 }, (_, i) => xs.slice(3 * i, 3 * i + 3));
  return { t, r, id, w, d, local: perWorker(local), seen: perWorker(seen) };
};

t.test('a decision that did not see a peer’s simultaneous one counts its load as unseen', (t) => {
  const lines = [
    // Replica a routes to w0 at t=0, seeing only itself.
    line(0, 'a', 1, 'w0', [1, 1, 100, 0, 0], [1, 100, 0, 0, 0, 0], [1, 100, 0, 0, 0, 0]),
    // Replica b routes to w0 1 ms later, not yet having heard of a's request: herding.
    line(1, 'b', 1, 'w0', [1, 1, 200, 0, 0], [1, 200, 0, 0, 0, 0], [1, 200, 0, 0, 0, 0]),
    // 50 ms later b has heard: its view equals the truth, and w1 is the least loaded in both.
    line(50, 'b', 2, 'w1', [1, 1, 10, 0, 0], [1, 200, 0, 1, 10, 0], [2, 300, 0, 1, 10, 0]),
  ];
  const a = analyseRow('row0-n2-deltas', lines, 5);
  t.equal(a.replicas, 2);
  t.equal(a.decisions, 3);
  // Only b's first decision missed something: one request, 100 tokens.
  t.equal(a.unseenRequests, 1 / 3);
  t.equal(a.unseenPrefillTokens, 100 / 3);
  // Believed w1 (0 tokens) least prefilled in all three; true also w1 in all three.
  t.equal(a.leastPrefillDiffers, 0);
  t.equal(a.concurrentShare, 1 / 3);
  t.equal(a.sameWorkerShare, 1 / 3);
  t.equal(a.sameWorkerAnyShare, 1 / 3);
  t.end();
});

t.test('first-token and end lines update the truth but are not decisions', (t) => {
  const lines = [
    line(0, 'a', 1, 'w0', [1, 1, 100, 0, 0], [1, 100, 0, 0, 0, 0], [1, 100, 0, 0, 0, 0]),
    line(5, 'a', 1, 'w0', [0, -1, -100, 1, 7], [1, 0, 7, 0, 0, 0], [1, 0, 7, 0, 0, 0]),
    // b believes w0 still has 100 prefill tokens queued; the truth has none, so the least-prefill worker differs.
    line(6, 'b', 1, 'w1', [1, 1, 50, 0, 0], [0, 0, 0, 1, 50, 0], [1, 100, 0, 1, 50, 0]),
  ];
  const a = analyseRow('r', lines, 5);
  t.equal(a.decisions, 2);
  t.equal(a.unseenRequests, 0);
  t.equal(a.leastPrefillDiffers, 1 / 2);
  t.end();
});

t.test('readRows groups replica files by row, rows in the order they ran', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-decisions-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const one = JSON.stringify(line(0, 'x', 1, 'w0', [1, 0, 0, 0, 0], [1, 0, 0], [1, 0, 0]));
  writeFileSync(join(dir, 'row10-n4-deltas-3f2a9c01-77b2.jsonl'), `${one}\n`);
  writeFileSync(join(dir, 'row2-n1-deltas-aa11bb22-0c0d.jsonl'), `${one}\n`);
  writeFileSync(join(dir, 'row10-n4-deltas-b0c1d2e3-f405.jsonl'), `${one}\n${one}\n`);
  const rows = readRows(dir);
  t.same([...rows.keys()], ['row2-n1-deltas', 'row10-n4-deltas']);
  t.equal(rows.get('row10-n4-deltas')!.length, 3);
  t.end();
});

t.test('a replica silent for staleMs (killed) no longer counts as load anyone should have seen', (t) => {
  const lines = [
    line(0, 'a', 1, 'w0', [1, 1, 100, 0, 0], [1, 100, 0, 0, 0, 0], [1, 100, 0, 0, 0, 0]),
    // a dies with its request in flight; 3 s later b decides without it.
    line(3000, 'b', 1, 'w0', [1, 1, 100, 0, 0], [1, 100, 0, 0, 0, 0], [1, 100, 0, 0, 0, 0]),
  ];
  t.equal(analyseRow('r', lines, 5).unseenRequests, 0);
  t.equal(analyseRow('r', lines, 5, 10_000).unseenRequests, 1 / 2, 'within staleMs it still counts');
  t.end();
});
