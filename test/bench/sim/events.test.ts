import t, { type Test } from 'tap';
import { Unpackr } from 'msgpackr';
import { Dealer, Subscriber } from 'zeromq';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { startSimWorker, type SimWorker, type SimWorkerOptions } from '../../../bench/sim/worker.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);
const unpackr = new Unpackr({ int64AsType: 'bigint', mapsAsObjects: true, useRecords: false });

type Event = Record<string, unknown> & { type: string };
interface Batch {
  seq: bigint;
  ts: number;
  events: Event[];
  rank: unknown;
}

function decode(frames: Buffer[]): Batch {
  const [, seq, payload] = frames;
  const [ts, events, rank] = unpackr.unpack(payload!) as [number, Event[], unknown];
  return { seq: seq!.readBigUInt64BE(), ts, events, rank };
}

/**
 * Collects every batch a real SUB socket receives. A PUB drops messages until
 * the subscription has reached it (ZMQ's slow joiner), so this sends probe
 * requests (one stored block each) until one arrives: from then on nothing is lost.
 */
async function subscribe(
  t: Test,
  w: SimWorker,
): Promise<{ batches: Batch[]; until(pred: () => boolean, ms?: number): Promise<void> }> {
  const sub = new Subscriber({ linger: 0 });
  sub.connect(w.kvEvents!);
  sub.subscribe();
  const batches: Batch[] = [];
  const loop = (async () => {
    try {
      for await (const frames of sub) batches.push(decode(frames));
    } catch {
      /* closed */
    }
  })();
  t.teardown(async () => {
    sub.close();
    await loop;
  });
  const until = async (pred: () => boolean, ms = 10_000) => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out; batches: ${batches.length}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  for (let probe = 0; batches.length === 0; probe++) {
    if (probe === 50) throw new Error('the subscriber never received a probe batch');
    await complete(w.url, ids(90_000 + probe * 17, 17), 1);
    await new Promise((r) => setTimeout(r, 100));
  }
  // The probes published before the subscription took hold are lost on PUB; as a gateway does, fetch them from
  // the replay endpoint, so that a test sees every event (an evicted probe block was otherwise "never stored").
  const first = batches[0]!.seq;
  if (first > 0n && w.kvReplay) {
    const dealer = new Dealer({ linger: 0 });
    dealer.connect(w.kvReplay);
    await dealer.send([Buffer.alloc(0), Buffer.alloc(8)]); // from seq 0
    const missed: Batch[] = [];
    for (;;) {
      const frames = (await dealer.receive()) as Buffer[];
      if (frames[1]!.equals(Buffer.alloc(8, 0xff))) break;
      const b = decode(frames);
      if (b.seq < first) missed.push(b);
    }
    dealer.close();
    batches.unshift(...missed);
  }
  return { batches, until };
}

async function worker(t: Test, options: SimWorkerOptions): Promise<SimWorker> {
  const w = await startSimWorker({
    tokenizer,
    kvEvents: { endpoint: 'tcp://127.0.0.1:*', replayEndpoint: 'tcp://127.0.0.1:*' },
    ...options,
  });
  t.teardown(() => w.close());
  return w;
}

async function complete(
  url: string,
  prompt: number[],
  maxTokens: number,
): Promise<{ usage: { prompt_tokens_details: { cached_tokens: number } } }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ prompt, max_tokens: maxTokens }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  return (await res.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } };
}

const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

t.test('stored blocks arrive as vLLM tagged-map events with u64 hashes, chained parents, token ids', async (t) => {
  const w = await worker(t, {});
  const sub = await subscribe(t, w);
  await complete(w.url, ids(1000, 40), 1); // 2 full blocks
  await complete(w.url, ids(1000, 56), 1); // shares those 2, adds 1
  const ours = () =>
    sub.batches
      .flatMap((b) => b.events)
      .filter(
        (e) =>
          e.type === 'BlockStored' && (e.token_ids as number[])[0]! >= 1000 && (e.token_ids as number[])[0]! < 2000,
      );
  await sub.until(() => ours().length >= 2);
  const stored = ours();
  const [first, second] = stored;
  t.equal((first!.block_hashes as bigint[]).length, 2);
  t.equal(typeof (first!.block_hashes as bigint[])[0], 'bigint', 'hashes are u64 (msgpack uint 64)');
  t.equal(first!.parent_block_hash, null);
  t.same(first!.token_ids, ids(1000, 32));
  t.equal(first!.block_size, 16);
  t.equal(first!.medium, 'GPU');
  t.same(second!.token_ids, ids(1032, 16));
  t.equal(second!.parent_block_hash, (first!.block_hashes as bigint[])[1], 'parent = last block of the shared prefix');
  t.equal(sub.batches[0]!.rank, 0);
  t.ok(Math.abs(sub.batches[0]!.ts - Date.now() / 1000) < 60, 'ts is epoch seconds');
  const seqs = sub.batches.map((b) => b.seq);
  t.same(
    seqs,
    seqs.map((_, i) => seqs[0]! + BigInt(i)),
    'sequence numbers count up without gaps',
  );
});

t.test('eviction under pressure emits BlockRemoved for stored hashes; usage stays within capacity', async (t) => {
  const kvBlocks = 12;
  const w = await worker(t, { kvBlocks, timing: { speedup: 20 } });
  const sub = await subscribe(t, w);
  let maxUsed = 0;
  const sampler = setInterval(() => (maxUsed = Math.max(maxUsed, w.stats().kvBlocksUsed)), 1);
  t.teardown(() => clearInterval(sampler));
  for (let i = 0; i < 6; i++) await complete(w.url, ids(5000 + i * 1000, 64), 8); // 4-5 blocks each
  clearInterval(sampler);
  const published = BigInt(w.stats().kvEventsNextSeq!);
  await sub.until(() => sub.batches.at(-1)?.seq === published - 1n);
  const events = sub.batches.flatMap((b) => b.events);
  const storedHashes = new Set(
    events.filter((e) => e.type === 'BlockStored').flatMap((e) => e.block_hashes as bigint[]),
  );
  const removedHashes = events.filter((e) => e.type === 'BlockRemoved').flatMap((e) => e.block_hashes as bigint[]);
  t.ok(removedHashes.length > 0);
  t.same(
    removedHashes.filter((h) => !storedHashes.has(h)),
    [],
    'every removed hash was stored before',
  );
  t.ok(maxUsed <= kvBlocks, `peak ${maxUsed} of ${kvBlocks} blocks`);
  // The index a subscriber builds never holds more live blocks than the cache has.
  const live = new Set<bigint>();
  for (const e of events) {
    if (e.type === 'BlockStored') for (const h of e.block_hashes as bigint[]) live.add(h);
    if (e.type === 'BlockRemoved') for (const h of e.block_hashes as bigint[]) live.delete(h);
  }
  t.ok(live.size <= kvBlocks);
  t.equal(live.size, w.stats().kvBlocksCached, "the subscriber's view matches the cache");
});

t.test('dropped batches are withheld from PUB and come back through replay', async (t) => {
  const w = await worker(t, {});
  const sub = await subscribe(t, w);
  const drop = await fetch(`${w.url}/sim/drop-kv-events`, { method: 'POST', body: JSON.stringify({ count: 1 }) });
  t.equal(drop.status, 200);
  const dropped = BigInt(((await drop.json()) as { nextSeq: string }).nextSeq);
  await complete(w.url, ids(1, 32), 1); // dropped
  await complete(w.url, ids(500, 32), 1); // delivered
  await sub.until(() => sub.batches.some((b) => b.seq === dropped + 1n));
  t.notOk(
    sub.batches.some((b) => b.seq === dropped),
    'the subscriber sees a gap',
  );

  const dealer = new Dealer({ linger: 0 });
  t.teardown(() => dealer.close());
  dealer.connect(w.kvReplay!);
  const start = Buffer.alloc(8);
  start.writeBigUInt64BE(dropped);
  await dealer.send([Buffer.alloc(0), start]);
  const replies: Buffer[][] = [];
  for (;;) {
    const frames = (await dealer.receive()) as Buffer[];
    replies.push(frames);
    if (frames[1]!.equals(Buffer.alloc(8, 0xff))) break;
  }
  t.equal(replies.length, 3, 'two batches and the end marker');
  const [, seq0, payload0] = replies[0] as [Buffer, Buffer, Buffer];
  t.equal(seq0.readBigUInt64BE(), dropped);
  const [, events] = unpackr.unpack(payload0) as [number, Event[]];
  t.same(events[0]!.token_ids, ids(1, 32), 'the withheld batch');
});

t.test('reset-prefix-cache publishes AllBlocksCleared; legacy format sends positional events', async (t) => {
  const w = await worker(t, { kvEvents: { endpoint: 'tcp://127.0.0.1:*', format: 'legacy', topic: 'kv' } });
  const sub = await subscribe(t, w);
  const n = sub.batches.length;
  await complete(w.url, ids(1, 32), 1);
  const res = await fetch(`${w.url}/reset_prefix_cache`, { method: 'POST' });
  t.equal(res.status, 200);
  await sub.until(() => sub.batches.length >= n + 2);
  const [stored, cleared] = sub.batches.slice(n).map((b) => b.events[0] as unknown as unknown[]);
  t.equal(stored![0], 'BlockStored');
  t.same(stored![3], ids(1, 32));
  t.same(cleared, ['AllBlocksCleared']);
  const again = await complete(w.url, ids(1, 32), 1);
  t.equal(again.usage.prompt_tokens_details.cached_tokens, 0, 'nothing cached after the reset');
});
