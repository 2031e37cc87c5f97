import t, { type Test } from 'tap';
import { KvEventPublisher } from '../../../bench/sim/kv-publisher.js';
import { ZmqEventSource, type ZmqEventSourceOptions } from '../../../indexer/events/zmq-source.js';
import { hashOf, RecordingSink, storedEvent } from '../../fixtures/wire/recording-sink.js';

async function openPublisher(
  t: Test,
  opts: { replay?: boolean; endpoint?: string; format?: 'current' | 'legacy' } = {},
) {
  const pub = await KvEventPublisher.open({
    endpoint: opts.endpoint ?? 'tcp://127.0.0.1:*',
    replayEndpoint: opts.replay === false ? undefined : 'tcp://127.0.0.1:*',
    topic: 'kv-events',
    format: opts.format,
  });
  t.teardown(() => pub.close());
  return pub;
}

function startSource(t: Test, sink: RecordingSink, opts: Partial<ZmqEventSourceOptions> & { endpoint: string }) {
  const source = new ZmqEventSource({ workerId: 'w1', topic: 'kv-events', ...opts });
  t.teardown(() => source.stop());
  return source.start(sink).then(() => source);
}

let counter = 0;
/** ZMQ's slow joiner: a SUB misses what is published before its subscription reaches the PUB, so probe until one arrives. */
async function warmUp(pub: KvEventPublisher, sink: RecordingSink, before = sink.batches.length) {
  const timer = setInterval(() => pub.publish([storedEvent(counter++)]), 20);
  try {
    await sink.until(() => sink.batches.length > before, 'the first batch');
  } finally {
    clearInterval(timer);
  }
}

const seqs = (sink: RecordingSink) => sink.batches.map((b) => b.seq);
const inOrder = (n: number) => Array.from({ length: n }, (_, i) => BigInt(i));

t.test('round trip: batches arrive in order, late joiner catches up from 0 by replay', async (t) => {
  for (const format of ['current', 'legacy'] as const) {
    const pub = await openPublisher(t, { format });
    t.match(pub.endpoint, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    const sink = new RecordingSink();
    const source = await startSource(t, sink, { endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    await warmUp(pub, sink);
    for (let i = 0; i < 20; i++) pub.publish([storedEvent(1000 + i)]);
    pub.publish([]); // publishes nothing, takes no seq
    const total = Number(pub.nextSeq);
    await sink.until(() => sink.batches.length === total, `${total} batches`);
    t.strictSame(seqs(sink), inOrder(total), `${format}: every seq once, in order`);
    t.equal(hashOf(sink.batches[total - 1]!), 1019n + (1n << 63n));
    t.equal(sink.batches[0]!.dataParallelRank, 0);
    t.strictSame(sink.resets, []);
    const s = source.stats();
    t.equal(s.connected, true);
    t.equal(s.lastSeq, BigInt(total - 1));
    t.equal(s.gaps, 0);
    t.equal(s.decodeErrors, 0);
    t.equal(s.batchesApplied, total);
    t.ok(s.lagMs !== null && s.lagMs >= -1000 && s.lastBatchAt !== null);
    await source.stop();
    await pub.close();
  }
});

t.test('gap: dropped batches are replayed over DEALER exactly once', async (t) => {
  const pub = await openPublisher(t);
  const sink = new RecordingSink();
  const source = await startSource(t, sink, { endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
  await warmUp(pub, sink);
  await sink.until(() => sink.batches.length === Number(pub.nextSeq), 'warm-up batches');
  const before = source.stats();
  pub.dropNext(2);
  for (let i = 0; i < 6; i++) pub.publish([storedEvent(2000 + i)]);
  const total = Number(pub.nextSeq);
  await sink.until(() => sink.batches.length === total, `${total} batches`);
  t.strictSame(seqs(sink), inOrder(total));
  const after = source.stats();
  t.equal(after.gaps - before.gaps, 1, 'one gap');
  t.equal(after.batchesReplayed - before.batchesReplayed, 2, 'two batches recovered by replay');
  t.equal(after.resets, 0);
  t.strictSame(sink.resets, []);
});

t.test('gap without a replay endpoint resets the worker and carries on', async (t) => {
  const pub = await openPublisher(t, { replay: false });
  const sink = new RecordingSink();
  const source = await startSource(t, sink, { endpoint: pub.endpoint });
  await warmUp(pub, sink);
  const seen = sink.batches.length;
  pub.dropNext(1);
  pub.publish([storedEvent(1)]);
  pub.publish([storedEvent(2)]);
  await sink.until(() => sink.batches.length === seen + 1, 'the batch after the gap');
  t.equal(sink.resets.length, 1);
  t.match(sink.resets[0], /gap/);
  t.equal(sink.batches.at(-1)!.seq, pub.nextSeq - 1n);
  t.equal(source.stats().gaps, 1);
  t.equal(source.stats().resets, 1);
});

t.test('replay endpoint that never answers: times out, resets', async (t) => {
  const pub = await openPublisher(t, { replay: false });
  const sink = new RecordingSink();
  // A ROUTER nobody binds: the DEALER connects in the background and never hears back.
  const source = await startSource(t, sink, {
    endpoint: pub.endpoint,
    replayEndpoint: 'tcp://127.0.0.1:9',
    replayTimeoutMs: 300,
  });
  await warmUp(pub, sink);
  await sink.until(() => sink.batches.length === Number(pub.nextSeq) - Number(sink.batches[0]!.seq), 'warm-up batches');
  pub.dropNext(1);
  pub.publish([storedEvent(1)]);
  pub.publish([storedEvent(2)]);
  await sink.until(() => sink.resets.length === 1, 'a reset');
  t.match(sink.resets[0], /sent nothing for 300 ms/);
  await sink.until(() => sink.batches.at(-1)!.seq === pub.nextSeq - 1n, 'the held batches');
  t.equal(source.stats().gaps, 1);
});

t.test('publisher restart (seq back to 0 on the same port) resets the worker', async (t) => {
  const first = await openPublisher(t, { replay: false });
  const port = /:(\d+)$/.exec(first.endpoint)![1];
  const sink = new RecordingSink();
  const source = await startSource(t, sink, { endpoint: first.endpoint });
  await warmUp(first, sink);
  for (let i = 0; i < 200; i++) first.publish([storedEvent(i)]);
  await sink.until(() => sink.batches.at(-1)!.seq === first.nextSeq - 1n, "the first publisher's batches");
  await first.close();
  // libzmq releases the listening socket on its I/O thread, so the port can stay busy for a moment.
  let second: KvEventPublisher | undefined;
  for (let attempt = 0; !second; attempt++) {
    try {
      second = await openPublisher(t, { replay: false, endpoint: `tcp://*:${port}` });
    } catch (err) {
      if (attempt > 50) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  t.equal(second.endpoint, `tcp://127.0.0.1:${port}`, 'wildcard bind reported as a connectable address');
  await warmUp(second, sink);
  t.equal(sink.resets.length, 1);
  t.match(sink.resets[0], /backwards/);
  t.ok(sink.batches.at(-1)!.seq < 200n);
  t.equal(source.stats().resets, 1);
});

t.test('bind mode: the engine connects to us; bad frames count as decode errors', async (t) => {
  const { Publisher } = await import('zeromq');
  const sink = new RecordingSink();
  const source = new ZmqEventSource({ workerId: 'w2', endpoint: 'tcp://127.0.0.1:*', mode: 'bind', topic: 'w2' });
  t.teardown(() => source.stop());
  await source.start(sink);
  // We need the bound port: bind mode on a wildcard port is only useful in tests, so read it from the socket.
  const endpoint = (source as unknown as { sub: { lastEndpoint: string } }).sub.lastEndpoint;
  const pub = await KvEventPublisher.open({ endpoint, topic: 'w2' });
  t.teardown(() => pub.close());
  t.equal(pub.endpoint, endpoint, 'a connecting PUB reports the endpoint as given');
  const raw = new Publisher({ linger: 0 });
  t.teardown(() => raw.close());
  raw.connect(endpoint);
  await warmUp(pub, sink);
  await raw.send(['w2', Buffer.alloc(8), Buffer.from('garbage')]);
  await raw.send(['w2', Buffer.from('short')]);
  await raw.send(['other-topic', Buffer.alloc(8), Buffer.from('ignored by the prefix filter')]);
  await sink.until(() => source.stats().decodeErrors >= 1, 'decode errors', 5000).catch(() => undefined);
  t.ok(source.stats().decodeErrors >= 1, 'garbage counted, not fatal');
  pub.publish([storedEvent(5)]);
  await sink.until(() => sink.batches.at(-1)!.seq === pub.nextSeq - 1n, 'a batch after the garbage');
});

t.test('a worker that is down does not block start or stop', async (t) => {
  const sink = new RecordingSink();
  const source = new ZmqEventSource({
    workerId: 'down',
    endpoint: 'tcp://127.0.0.1:9',
    replayEndpoint: 'tcp://127.0.0.1:9',
  });
  const t0 = Date.now();
  await source.start(sink);
  await new Promise((r) => setTimeout(r, 100));
  await source.stop();
  t.ok(Date.now() - t0 < 2000);
  t.equal(source.stats().connected, false);
  t.equal(source.stats().lastSeq, null);
});

t.test('late joiner: batches published before the source started are replayed from 0', async (t) => {
  const pub = await openPublisher(t);
  for (let i = 0; i < 30; i++) pub.publish([storedEvent(i)]);
  await new Promise((r) => setTimeout(r, 200)); // let the PUB send them (to nobody) before we subscribe
  const sink = new RecordingSink();
  const source = await startSource(t, sink, { endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
  await warmUp(pub, sink);
  await sink.until(() => sink.batches.length === Number(pub.nextSeq), 'all batches');
  t.strictSame(seqs(sink), inOrder(Number(pub.nextSeq)));
  t.ok(source.stats().batchesReplayed >= 30, 'history came from the replay', { stats: source.stats() });
  t.equal(source.stats().gaps, 0, 'a late join is not a gap');
  t.strictSame(sink.resets, []);
});

t.test('newer replay framing with a topic frame is accepted', async (t) => {
  const { Publisher, Router } = await import('zeromq');
  const { encodeVllmBatch } = await import('../../../bench/sim/kv-encode.js');
  const pub = new Publisher({ linger: 0 });
  const router = new Router({ linger: 0 });
  t.teardown(() => {
    pub.close();
    router.close();
  });
  await pub.bind('tcp://127.0.0.1:*');
  await router.bind('tcp://127.0.0.1:*');
  const payload = (seq: bigint) =>
    encodeVllmBatch({ ts: 1, events: [storedEvent(Number(seq))], dataParallelRank: 3 }, 'current');
  const seq8 = (seq: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(seq);
    return b;
  };
  let next = 0n;
  const requests: bigint[] = [];
  void (async () => {
    for await (const [id, , start] of router) {
      if (!id || !start) continue;
      const from = start.readBigUInt64BE();
      requests.push(from);
      // vLLM main / TRT-LLM: [identity, "", topic, seq8, payload], end [identity, "", "", ff*8, ""].
      for (let s = from; s < next; s++) await router.send([id, '', 'kv', seq8(s), payload(s)]);
      await router.send([id, '', '', Buffer.alloc(8, 0xff), '']);
    }
  })().catch(() => undefined);
  const sink = new RecordingSink();
  await startSource(t, sink, { endpoint: pub.lastEndpoint!, replayEndpoint: router.lastEndpoint!, topic: 'kv' });
  const send = async () => {
    const s = next++;
    await pub.send(['kv', seq8(s), payload(s)]);
  };
  const timer = setInterval(() => void send(), 20);
  await sink.until(() => sink.batches.length > 0, 'first batch').finally(() => clearInterval(timer));
  await sink.until(() => sink.batches.length === Number(next), 'batches so far');
  next += 2n; // lost on the wire
  await send();
  await sink.until(() => sink.batches.length === Number(next), 'the replayed batches');
  t.strictSame(seqs(sink), inOrder(Number(next)));
  t.equal(sink.batches[0]!.dataParallelRank, 3);
  // From our last seq, not the first missing one: the engine must send our last batch back to prove it did not restart.
  t.equal(requests.at(-1), next - 4n, 'replay asked from our last seq');
  t.strictSame(sink.resets, [], 'the same bytes came back: no restart');
});

t.test(
  'seq 2^64-1 and an absurd timestamp do not corrupt last-seq or lag; a bad event costs only itself',
  async (t) => {
    const { Publisher } = await import('zeromq');
    const { encodeVllmBatch } = await import('../../../bench/sim/kv-encode.js');
    const { Packr } = await import('msgpackr');
    const pub = new Publisher({ linger: 0 });
    t.teardown(() => pub.close());
    await pub.bind('tcp://127.0.0.1:*');
    const sink = new RecordingSink();
    const source = await startSource(t, sink, { endpoint: pub.lastEndpoint!, topic: 'kv', probeIntervalMs: 0 });
    const seq8 = (seq: bigint) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(seq);
      return b;
    };
    const good = (n: number, ts = Date.now() / 1000) =>
      encodeVllmBatch({ ts, events: [storedEvent(n)], dataParallelRank: 0 }, 'current');
    let next = 0n;
    const timer = setInterval(() => void pub.send(['kv', seq8(next++), good(Number(next))]), 20);
    await sink.until(() => sink.batches.length > 0, 'first batch').finally(() => clearInterval(timer));
    await sink.until(() => sink.batches.length === Number(next) - Number(sink.batches[0]!.seq), 'warm-up');
    const lagBefore = source.stats().lagMs;
    await pub.send(['kv', seq8((1n << 64n) - 1n), good(1)]);
    await pub.send(['kv', seq8(next++), good(2, 1e300)]);
    // One batch: a good event, a malformed one, another good one.
    const packr = new Packr({ useRecords: false });
    const mixed = packr.pack([
      Date.now() / 1000,
      [
        { type: 'AllBlocksCleared' },
        { type: 'BlockStored', block_hashes: ['not a hash'], parent_block_hash: null, token_ids: [1], block_size: 1 },
        { type: 'AllBlocksCleared' },
      ],
      0,
    ]);
    await pub.send(['kv', seq8(next++), mixed]);
    await sink.until(() => sink.batches.at(-1)!.seq === next - 1n, 'the batches after the bad ones');
    const s = source.stats();
    t.equal(s.lastSeq, next - 1n, 'last seq is the real one');
    t.strictSame(s.skippedByReason, { 'bad-seq': 1, malformed: 1 });
    t.equal(s.ignoredTimestamps, 1);
    t.ok(s.lagMs !== null && Math.abs(s.lagMs) < 60_000, `lag stays sane (${s.lagMs}, before ${lagBefore})`);
    t.strictSame(
      sink.batches.at(-1)!.events.map((e) => e.kind),
      ['cleared', 'cleared'],
      'the good events of the mixed batch are applied',
    );
    t.strictSame(sink.resets, [], 'no reset: nothing was lost');
  },
);
