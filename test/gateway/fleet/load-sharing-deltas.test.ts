import t from 'tap';
import { pino } from 'pino';
import { Fleet } from '../../../gateway/fleet/fleet.js';
import { LoadSharing, loadSharingConfigSchema, type LoadTransport } from '../../../gateway/fleet/load-sharing.js';

const log = pino({ level: 'silent' });
const workers = ['w1', 'w2'].map((id, i) => ({
  id,
  url: `http://127.0.0.1:${i + 1}`,
  models: ['m'],
  role: 'both' as const,
  labels: {},
}));
const config = loadSharingConfigSchema.parse({
  nats: { servers: ['nats://unused'] },
  publishIntervalMs: 100,
  staleAfterMs: 500,
});
const tick = () => new Promise<void>((r) => setImmediate(r));
/** Lets every replica's per-tick flush (and the answers it provokes) run. */
const settle = async () => {
  for (let i = 0; i < 5; i++) await tick();
};

/** An in-memory NATS: every message reaches every connected subscriber, the sender included, in order. */
function fakeBus() {
  const subs = new Map<object, (d: Uint8Array) => void>();
  const sent: string[] = [];
  const transport = (): LoadTransport & { cut(): void } => {
    const key = {};
    let connected = true;
    return {
      publish: (d) => {
        if (!connected) return;
        sent.push(new TextDecoder().decode(d));
        for (const h of [...subs.values()]) h(d);
      },
      subscribe: (h, onUp) => {
        subs.set(key, h);
        onUp?.();
      },
      close: async () => void subs.delete(key),
      /** The process dies: nothing more in or out, and no goodbye. */
      cut: () => {
        connected = false;
        subs.delete(key);
      },
    };
  };
  return { transport, sent };
}

function replicas(t: { teardown(fn: () => unknown): void }, bus: ReturnType<typeof fakeBus>, now: () => number) {
  return (id: string) => {
    const fleet = new Fleet(workers, { sharedLoad: true });
    const transport = bus.transport();
    const sharing = new LoadSharing({ fleet, transport, config, log, replicaId: id, now });
    sharing.start();
    t.teardown(() => {
      fleet.close();
      return sharing.close();
    });
    return { fleet, sharing, transport, w1: fleet.get('w1')!, w2: fleet.get('w2')! };
  };
}

t.test('deltas: each routing decision, first token and end reaches the others within a tick', async (t) => {
  const bus = fakeBus();
  const replica = replicas(t, bus, () => 1000);
  const a = replica('a');
  const b = replica('b');
  await settle();
  bus.sent.length = 0;

  // Three changes in one tick: one message.
  const t1 = a.fleet.start(a.w1, 100, 7);
  const t2 = a.fleet.start(a.w1, 50, 3);
  a.fleet.start(a.w2, 20, 1);
  t.equal(b.w1.load.inflightRequests, 0, 'not before the tick ends');
  await settle();
  // Heartbeat snapshots may come in between on a slow machine; the deltas are one message.
  const batches = bus.sent.filter((m) => m.includes('"d":'));
  t.equal(batches.length, 1, 'batched per event-loop tick');
  t.match(JSON.parse(batches[0]!), { r: 'a', d: [['w1', 1, 1, 100, 0, 0, t1.id], ['w1'], ['w2']] });
  t.same(b.w1.load, {
    inflightRequests: 2,
    prefillRequests: 2,
    prefillTokens: 150,
    decodeRequests: 0,
    decodeBlocks: 0,
  });
  t.same(b.w1.localLoad.inflightRequests, 0, "b's own load untouched");
  t.same(b.w2.load.prefillTokens, 20);

  a.fleet.firstToken(t1);
  await settle();
  t.same(b.w1.load, { inflightRequests: 2, prefillRequests: 1, prefillTokens: 50, decodeRequests: 1, decodeBlocks: 7 });
  a.fleet.finish(t1);
  a.fleet.finish(t2);
  await settle();
  t.same(b.w1.load, { inflightRequests: 0, prefillRequests: 0, prefillTokens: 0, decodeRequests: 0, decodeBlocks: 0 });

  // b's own request adds to what it shows of a's, and a sees b's.
  b.fleet.start(b.w2, 5, 1);
  await settle();
  t.equal(b.w2.load.inflightRequests, 2);
  t.equal(a.w2.load.inflightRequests, 2);

  // A heartbeat snapshot agrees with the deltas: nothing is counted twice.
  a.sharing.tick();
  b.sharing.tick();
  t.equal(b.w2.load.inflightRequests, 2);
  t.equal(a.w2.load.prefillTokens, 25);
});

t.test("a dead replica's load expires; no phantom load remains", async (t) => {
  let clock = 1000;
  const bus = fakeBus();
  const replica = replicas(t, bus, () => clock);
  const a = replica('a');
  const b = replica('b');
  await settle();
  a.fleet.start(a.w1, 100, 7);
  await settle();
  t.equal(b.w1.load.inflightRequests, 1);
  t.equal(b.sharing.peers, 1);

  a.transport.cut(); // killed with a request in flight: no finish delta will ever come
  clock += 300;
  b.sharing.tick();
  t.equal(b.w1.load.inflightRequests, 1, 'still counted within staleAfterMs');
  clock += 300;
  b.sharing.tick();
  t.equal(b.sharing.peers, 0);
  t.same(b.w1.load, b.w1.localLoad, 'gone after staleAfterMs');
});

t.test('a late joiner converges at once (snapshot request), and a lost delta is repaired', async (t) => {
  const bus = fakeBus();
  const replica = replicas(t, bus, () => 1000);
  const a = replica('a');
  const b = replica('b');
  await settle();
  a.fleet.start(a.w1, 100, 7);
  b.fleet.start(b.w2, 30, 2);
  await settle();

  const c = replica('c');
  await settle();
  t.equal(c.sharing.peers, 2);
  t.equal(c.w1.load.prefillTokens, 100, "a's load, from the snapshot it sent on c's request");
  t.equal(c.w2.load.prefillTokens, 30);
  // Deltas after the snapshot apply on top of it.
  const ta = a.fleet.start(a.w2, 10, 1);
  await settle();
  t.equal(c.w2.load.prefillTokens, 40);

  // A delta batch that never arrives (sequence gap): the next one triggers a resync.
  const sends = a.transport.publish;
  a.transport.publish = () => {};
  a.fleet.finish(ta);
  await settle();
  a.transport.publish = sends;
  t.equal(c.w2.load.prefillTokens, 40, 'the lost finish is not known yet');
  a.fleet.start(a.w1, 1, 1);
  await settle();
  t.equal(c.w2.load.prefillTokens, 30, 'resynchronised from a fresh snapshot');
  t.equal(c.w1.load.prefillTokens, 101);
});

t.test('a message from an unknown replica with a malformed body changes nothing', async (t) => {
  const bus = fakeBus();
  const a = replicas(t, bus, () => 1000)('a');
  for (const junk of ['{', 'null', '{"r":"z","s":1,"d":[["w1","x",1e400]]}', '{"r":"z","s":0,"w":{"w1":[-5,"a"]}}'])
    a.sharing.receive(new TextEncoder().encode(junk));
  await settle();
  t.equal(a.w1.load.inflightRequests, 0);
  t.equal(a.w1.load.prefillRequests, 0);
});

t.test('orderDecisions: replicas decide simultaneous requests in arrival order, each seeing the last', async (t) => {
  const bus = fakeBus();
  const ordered = loadSharingConfigSchema.parse({ ...config, orderDecisions: true, orderMaxWaitMs: 1000 });
  const make = (id: string) => {
    const fleet = new Fleet(workers, { sharedLoad: true });
    const transport = bus.transport();
    const sharing = new LoadSharing({ fleet, transport, config: ordered, log, replicaId: id, now: () => 1000 });
    sharing.start();
    t.teardown(() => {
      fleet.close();
      return sharing.close();
    });
    return { fleet, sharing, transport, w1: fleet.get('w1')! };
  };
  const a = make('a');
  const alone = a.sharing.decisionTurn(50);
  t.equal(alone.wait(), undefined, 'alone: nothing to wait for, not even a turn of the event loop');
  alone.done();
  const b = make('b');
  await settle();
  const sentBefore = bus.sent.length;
  alone.done();
  await settle();
  t.equal(bus.sent.length, sentBefore, 'a no-op turn sends nothing');

  // a's request arrived first but is still tokenizing; b's arrived 1 ms later and is ready.
  const ta = a.sharing.decisionTurn(100);
  await settle();
  const tb = b.sharing.decisionTurn(101);
  await settle();
  await ta.wait();
  t.equal(a.sharing.counts.order!.waited, 0, 'a waits for nobody: b arrived later');
  let released = false;
  void tb.wait()!.then(() => (released = true));
  await settle();
  t.notOk(released, 'b waits while a, holding an earlier request, decides');
  t.equal(b.sharing.counts.order!.waited, 1);
  a.fleet.start(a.w1, 100, 7); // a's decision: its load, then the end of its turn, in the same tick
  ta.done();
  await settle();
  t.ok(released, "b goes once a's decision is in");
  const c = b.sharing.counts;
  t.ok(c.deltaAgeCount >= 1 && c.deltaAgeSumMs >= 0, "the age of a's delta batches on receipt is counted");
  t.equal(b.w1.load.inflightRequests, 1, "and sees a's request on w1 when it goes");
  tb.done();

  // Same arrival time: the lower replica id first.
  const ta2 = a.sharing.decisionTurn(200);
  const tb2 = b.sharing.decisionTurn(200);
  await settle();
  await ta2.wait();
  const wb2 = tb2.wait();
  await settle();
  ta2.done();
  await wb2;
  tb2.done();
  t.equal(a.sharing.counts.order!.waited, 0);
  t.same(b.sharing.counts.order, { waited: 2, timedOut: 0, waitedMs: 0 });
});

t.test('orderDecisions: a wait is bounded, and a dead replica blocks nobody', async (t) => {
  let clock = 1000;
  const bus = fakeBus();
  const ordered = loadSharingConfigSchema.parse({ ...config, orderDecisions: true, orderMaxWaitMs: 30 });
  const make = (id: string) => {
    const fleet = new Fleet(workers, { sharedLoad: true });
    const transport = bus.transport();
    const sharing = new LoadSharing({ fleet, transport, config: ordered, log, replicaId: id, now: () => clock });
    sharing.start();
    t.teardown(() => {
      fleet.close();
      return sharing.close();
    });
    return { sharing, transport };
  };
  const a = make('a');
  const b = make('b');
  await settle();
  a.sharing.decisionTurn(100); // never decided: a hangs
  await settle();
  const started = Date.now();
  await b.sharing.decisionTurn(101).wait();
  t.ok(Date.now() - started >= 25, 'waited about orderMaxWaitMs');
  t.equal(b.sharing.counts.order!.timedOut, 1);

  a.transport.cut(); // a dies with its request announced
  const wait = b.sharing.decisionTurn(102).wait();
  await settle();
  t.equal(b.sharing.counts.order!.waited, 2, 'still blocked while a counts as alive');
  clock += 600;
  b.sharing.tick(); // a expires
  await wait;
  t.equal(b.sharing.counts.order!.timedOut, 1, "released by a's expiry, not by the timeout");
  t.equal(b.sharing.decisionTurn(103).wait(), undefined, 'no peers left');
  t.equal(config.orderDecisions, false, 'off by default');
});

t.test('orderDecisions: a request announced and decided in one tick blocks nobody afterwards', async (t) => {
  const bus = fakeBus();
  const ordered = loadSharingConfigSchema.parse({ ...config, orderDecisions: true, orderMaxWaitMs: 1000 });
  const [a, b] = ['a', 'b'].map((id) => {
    const fleet = new Fleet(workers, { sharedLoad: true });
    const sharing = new LoadSharing({ fleet, transport: bus.transport(), config: ordered, log, replicaId: id });
    sharing.start();
    t.teardown(() => {
      fleet.close();
      return sharing.close();
    });
    return sharing;
  });
  await settle();
  const quick = a!.decisionTurn(100);
  quick.done(); // no tokenizing: announced and ended in the same flush
  await settle();
  await b!.decisionTurn(101).wait();
  t.equal(b!.counts.order!.waited, 0);
});
