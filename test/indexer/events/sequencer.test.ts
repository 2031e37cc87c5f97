import t from 'tap';
import { Sequencer, type Replayer, type SequencedItem } from '../../../indexer/events/sequencer.js';
import type { KvEventBatch } from '../../../indexer/events/types.js';

/** An engine's replay buffer: what it published, by seq, with the bytes it sent. */
class FakeEngine implements Replayer {
  buffer: SequencedItem[] = [];
  requests: bigint[] = [];
  readonly #tag: string;
  constructor(tag: string) {
    this.#tag = tag;
  }

  publish(seq: bigint): SequencedItem {
    const batch: KvEventBatch = { seq, ts: 0, dataParallelRank: null, events: [] };
    const item = { seq, batch, payload: Buffer.from(`${this.#tag}:${seq}`) };
    this.buffer.push(item);
    return item;
  }

  async replay(from: bigint, onItem: (item: SequencedItem) => void): Promise<void> {
    this.requests.push(from);
    await Promise.resolve();
    for (const item of this.buffer) if (item.seq >= from) onItem(item);
  }
}

function setup(engine: { current: Replayer }) {
  const delivered: bigint[] = [];
  const resets: string[] = [];
  const seq = new Sequencer({
    workerId: 'w',
    replayer: { replay: (from, onItem, signal) => engine.current.replay(from, onItem, signal) },
    deliver: (item) => delivered.push(item.seq),
    reset: (reason) => resets.push(reason),
  });
  t.teardown(() => seq.stop());
  return { seq, delivered, resets };
}

const settle = () => new Promise((r) => setTimeout(r, 20));

t.test('a restart whose first batches were lost, next seq above ours, is noticed', async (t) => {
  const old = new FakeEngine('old');
  const engine = { current: old as Replayer };
  const { seq, delivered, resets } = setup(engine);
  for (let i = 0n; i < 3n; i++) seq.push(old.publish(i));
  t.strictSame(delivered, [0n, 1n, 2n]);
  const fresh = new FakeEngine('new');
  engine.current = fresh;
  for (let i = 0n; i < 5n; i++) fresh.publish(i); // lost while reconnecting
  seq.push(fresh.publish(5n)); // above our 2: looks like a gap
  await settle();
  t.equal(fresh.requests[0], 2n, 'the gap replay starts at our last batch, to check it');
  t.equal(resets.length, 1, 'the index is cleared once');
  t.match(resets[0], /does not continue ours/);
  t.strictSame(delivered.slice(3), [0n, 1n, 2n, 3n, 4n, 5n], "then the new process's whole history is learnt");
  t.equal(seq.stats().restarts, 1);
});

t.test('a probe finds a batch lost at the end of a quiet period', async (t) => {
  const e = new FakeEngine('e');
  const { seq, delivered, resets } = setup({ current: e });
  seq.push(e.publish(0n));
  seq.push(e.publish(1n));
  e.publish(2n); // lost, and nothing comes after it
  seq.probe();
  await settle();
  t.strictSame(delivered, [0n, 1n, 2n]);
  t.strictSame(resets, []);
  const s = seq.stats();
  t.equal(s.catchUps, 1);
  t.ok(s.lastCatchUpAt !== null);
  seq.probe(); // nothing new: no catch-up, no reset
  await settle();
  t.equal(seq.stats().catchUps, 1);
  t.equal(seq.stats().probes, 2);
  t.strictSame(resets, []);
});

t.test('live batches a probe already replayed are duplicates, not a restart', async (t) => {
  const e = new FakeEngine('e');
  const { seq, delivered, resets } = setup({ current: e });
  seq.push(e.publish(0n));
  seq.push(e.publish(1n));
  // Published, but still queued on the live socket when the probe's replay answers.
  const late = [e.publish(2n), e.publish(3n)];
  seq.probe();
  await settle();
  t.strictSame(delivered, [0n, 1n, 2n, 3n], 'the replay brought 2 and 3 first');
  for (const item of late) seq.push(item);
  seq.push(e.publish(4n));
  t.strictSame(delivered, [0n, 1n, 2n, 3n, 4n], 'their live copies are skipped, the stream goes on');
  t.strictSame(resets, []);
  t.equal(seq.stats().restarts, 0);
  t.equal(seq.stats().liveDuplicates, 2);
  // A real restart after that is still one: the new process counts from 0, below the live stream.
  const fresh = new FakeEngine('new');
  seq.push(fresh.publish(0n));
  await settle();
  t.equal(seq.stats().restarts, 1);
  t.equal(resets.length, 1);
});

t.test('a probe to a restarted engine that has published nothing yet clears the index', async (t) => {
  const old = new FakeEngine('old');
  const engine = { current: old as Replayer };
  const { seq, resets } = setup(engine);
  seq.push(old.publish(0n));
  engine.current = new FakeEngine('new');
  seq.probe();
  await settle();
  t.equal(resets.length, 1);
  t.equal(seq.lastSeq, null);
});

t.test('a probe to a restarted engine whose batch at our seq differs clears the index', async (t) => {
  const old = new FakeEngine('old');
  const engine = { current: old as Replayer };
  const { seq, resets, delivered } = setup(engine);
  seq.push(old.publish(0n));
  seq.push(old.publish(1n));
  const fresh = new FakeEngine('new');
  engine.current = fresh;
  fresh.publish(0n);
  fresh.publish(1n);
  fresh.publish(2n);
  seq.probe();
  await settle();
  t.equal(resets.length, 1);
  t.strictSame(delivered, [0n, 1n, 0n, 1n, 2n]);
});

t.test('without a replayer: a jump resets, a step back resets, probe is a no-op', async (t) => {
  const delivered: bigint[] = [];
  const resets: string[] = [];
  const seq = new Sequencer({ workerId: 'w', deliver: (i) => delivered.push(i.seq), reset: (r) => resets.push(r) });
  const item = (s: bigint) => ({ seq: s, batch: null });
  seq.push(item(0n));
  seq.push(item(3n));
  seq.push(item(1n));
  seq.probe();
  t.strictSame(delivered, [0n, 3n, 1n]);
  t.equal(resets.length, 2);
  t.match(resets[0], /jumped from 0 to 3/);
  t.match(resets[1], /backwards/);
  t.equal(seq.stats().probes, 0);
});

t.test('a long replay that keeps sending is not cut off by the timeout; a silent one is', async (t) => {
  const delivered: bigint[] = [];
  const resets: string[] = [];
  const slow: Replayer = {
    async replay(from, onItem) {
      for (let s = from; s < 6n; s++) {
        await new Promise((r) => setTimeout(r, 30));
        onItem({ seq: s, batch: { seq: s, ts: 0, dataParallelRank: null, events: [] } });
      }
    },
  };
  const seq = new Sequencer({
    workerId: 'w',
    replayer: slow,
    replayTimeoutMs: 80,
    deliver: (item) => delivered.push(item.seq),
    reset: (reason) => resets.push(reason),
  });
  t.teardown(() => seq.stop());
  seq.probe(); // a catch-up from 0: six batches over ~180 ms, never more than 30 ms apart
  await new Promise((r) => setTimeout(r, 400));
  t.strictSame(delivered, [0n, 1n, 2n, 3n, 4n, 5n]);
  t.strictSame(resets, []);

  const silent = new Sequencer({
    workerId: 'w',
    replayer: { replay: () => new Promise(() => {}) },
    replayTimeoutMs: 80,
    deliver: () => {},
    reset: (reason) => resets.push(reason),
  });
  t.teardown(() => silent.stop());
  silent.push({ seq: 0n, batch: { seq: 0n, ts: 0, dataParallelRank: null, events: [] } });
  silent.push({ seq: 5n, batch: { seq: 5n, ts: 0, dataParallelRank: null, events: [] } }); // a gap
  await new Promise((r) => setTimeout(r, 200));
  t.match(resets, [/replay sent nothing for 80 ms/]);
});
