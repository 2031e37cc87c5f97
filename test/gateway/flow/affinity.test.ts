import t from 'tap';
import type { FlowPass } from '../../../gateway/flow/flow.js';
import { call, flow, routed, saturate, strategy, worker, type Gate } from '../../fixtures/flow.js';

/**
 * Where a request goes when the worker holding its cache is saturated and another has room
 * (gateway/flow/place.ts): it waits for its worker while its own class uses the room, moves
 * when moving loses nothing, and otherwise after the recomputation it would cause.
 * These tests turn off joining a saturated pick (`affinityOverflow`), tested at the end.
 */
const NO_OVERFLOW = { default: { prefillTokens: 1000 }, affinityOverflow: 1 };

t.test('under overload a new request does not join its saturated pick', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  // Held, and waiting for a (its cache) even once b has room: the gateway is holding requests.
  const batch = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000), { 'x-kvgate-priority': 'sheddable' }).out;
  t.ok(batch instanceof Promise);
  saturate(b, 0);
  // Joining a would queue the request inside its engine, first come, first served, where priority
  // no longer applies (issue 17: critical requests waited there behind standard ones).
  const critical = { 'x-kvgate-priority': 'critical' };
  const moved = call(f, routed([a, b], strategy({}, 'a')), critical).out as FlowPass;
  t.equal(moved.routed.worker.id, 'b', 'with nothing cached on a, it goes to the room on b at once');
  const held = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000), critical).out;
  t.ok(
    held instanceof Promise,
    'one with most of its prompt cached on a waits in the gateway for a, b has room or not',
  );
  let batchDone = false;
  void (batch as Promise<FlowPass | null>).then(() => (batchDone = true));
  saturate(a, 0);
  f.kick();
  t.equal((await held)?.routed.worker.id, 'a', 'and goes there when it has room, before the sheddable one');
  t.notOk(batchDone, 'the sheddable request still waits');
  saturate(a, 0);
  f.kick();
  t.equal((await batch)?.routed.worker.id, 'a');
});

t.test("a held request waits a little for the strategy's favourite, then takes any room", async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 150 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  const started = Date.now();
  // 16k of the 20k prompt cached on a: a's queue (1000 tokens) costs far less than recomputing them on b.
  const { out } = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000));
  saturate(b, 0);
  f.kick();
  const pass = await out;
  t.equal(pass?.routed.worker.id, 'b', 'released to the worker with room once the wait for the favourite ran out');
  t.ok(Date.now() - started >= 140, 'not before affinityWaitMs');
  const moved = (f.summary([a, b]) as { classes: { moved: { requests: number; lostBlocks: number } }[] }).classes[1]!;
  t.same(moved.moved, { requests: 1, lostBlocks: 1000 }, 'the move and the cache it gave up are counted');
});

t.test('the affinity wait starts when room appears elsewhere, not at arrival', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 150 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  const { out } = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000));
  // Longer than affinityWaitMs with every worker saturated: under overload this is every held request.
  await new Promise((r) => setTimeout(r, 200));
  saturate(b, 0);
  const roomAt = Date.now();
  f.kick();
  await new Promise((r) => setTimeout(r, 60));
  saturate(a, 0);
  f.kick();
  const pass = await out;
  t.equal(pass?.routed.worker.id, 'a', 'its pick opened within the wait, so it kept its cache');
  t.ok(Date.now() - roomAt < 140, 'released when the pick opened');
});

t.test('a held request waits for its cached worker while staying is predicted faster, then moves', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 10_000 });
  const [a, b, c] = [worker('a'), worker('b'), worker('c')];
  for (const w of [a, b, c]) saturate(w);
  // Only the shared prefix: b holds as much of it as a, so moving loses nothing and happens at once.
  const shared = call(f, routed([a, b, c], strategy({ a: 4, b: 4 }, 'a'), 2000));
  // 100 blocks (1,600 tokens) cached on a only. Staying: 1,000 queued + 400 on a; moving: 2,000 on c.
  const own = call(f, routed([a, b, c], strategy({ a: 100 }, 'a'), 2000));
  let ownAt = '';
  void Promise.resolve(own.out).then((p) => (ownAt = p?.routed.worker.id ?? 'shed'));
  saturate(b, 0);
  f.kick();
  const first = await shared.out;
  t.equal(first?.routed.worker.id, 'b', 'a move that loses no cached block is made at once');
  t.match(first?.note, /moved_from=a; lost_blocks=0; move=free/);
  saturate(b);
  saturate(c, 0);
  f.kick();
  await new Promise((r) => setTimeout(r, 60));
  t.equal(ownAt, '', 'c has room, but staying is predicted faster: it waits for a');
  // a's queue grows (a long prompt joined it): staying now costs 3,400 against 2,000 on c. Nobody else
  // waits for the room on c, so the recomputation costs no one and it moves.
  saturate(a, 3000);
  f.kick();
  const second = await own.out;
  t.equal(second?.routed.worker.id, 'c', 'the prefix is recomputed where there is room');
  const moved = (f.summary([a, b, c]) as { classes: { moved: { requests: number; lostBlocks: number } }[] })
    .classes[1]!;
  t.same(moved.moved, { requests: 2, lostBlocks: 100 });
});

t.test('while its own class takes the room, a request waits for its cached worker', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  // 100 blocks (1,600 tokens) cached on a: ~160 ms to recompute, less than it will wait.
  const sticky = call(f, routed([a, b], strategy({ a: 100 }, 'a'), 2000)).out;
  const loose: Gate[] = [];
  for (let i = 0; i < 4; i++)
    loose.push(call(f, routed([a, b], strategy({}, 'a'), 2000), { 'x-kvgate-tenant': `t${i}` }).out);
  let stickyAt = '';
  void (sticky as Promise<FlowPass | null>).then((p) => (stickyAt = p?.routed.worker.id ?? ''));
  // b gets room four times, 30 ms apart: each time a request with nothing cached takes it,
  // and the one with its prefix on a keeps waiting.
  for (const l of loose) {
    saturate(b, 0);
    f.kick();
    t.equal((await l)?.routed.worker.id, 'b');
    saturate(b);
    await new Promise((r) => setTimeout(r, 30));
  }
  t.equal(stickyAt, '', 'still waiting for a');
  saturate(a, 0);
  f.kick();
  t.equal((await sticky)?.routed.worker.id, 'a', 'and a gets it, cache and all');
});

t.test('the recomputation counts against a move only when its own class or a higher one wants the room', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a, 3000);
  saturate(b);
  // 100 blocks (1,600 tokens) cached on a: staying costs 3,000 queued + 400, moving 2,000 on b
  // plus, while others of its class want b, the 1,600 it recomputes there.
  const sticky = call(f, routed([a, b], strategy({ a: 100 }, 'a'), 2000)).out;
  const peer = call(f, routed([a, b], strategy({}, 'a'), 2000), { 'x-kvgate-tenant': 'peer' }).out;
  let stickyAt = '';
  void (sticky as Promise<FlowPass | null>).then((p) => (stickyAt = p?.routed.worker.id ?? 'shed'));
  saturate(b, 0);
  f.kick();
  t.equal((await peer)?.routed.worker.id, 'b', 'a standard request with nothing cached takes the room on b');
  t.equal(stickyAt, '', 'while it wanted the room, moving (3,600) was not worth it against staying (3,400)');
  saturate(b, 0);
  f.kick();
  t.equal((await sticky)?.routed.worker.id, 'b', 'room nobody of its class wants: moving (2,000) beats staying');
  // The same with only a lower class wanting the room.
  saturate(b);
  const critical = call(f, routed([a, b], strategy({ a: 100 }, 'a'), 2000), { 'x-kvgate-priority': 'critical' }).out;
  const batch = call(f, routed([a, b], strategy({}, 'a'), 2000), { 'x-kvgate-priority': 'sheddable' }).out;
  let batchDone = false;
  void Promise.resolve(batch).then(() => (batchDone = true));
  saturate(b, 0);
  f.kick();
  t.equal(
    (await critical)?.routed.worker.id,
    'b',
    'a sheddable request wanting the room does not hold back a critical move',
  );
  t.notOk(batchDone, 'the sheddable one waits');
  saturate(b, 0);
  f.kick();
  t.ok(await batch);
});

t.test('a saturated cached pick: join it, move at once, or wait, by predicted TTFT and recomputation', async (t) => {
  /**
   * A fresh gateway under overload (a sheddable request held), a saturated at its 1,000-token capacity
   * (`queuedOnA`), b with room; default affinityOverflow 2: a join may add up to one capacity.
   * Speed: the initial 10k tokens/s. Sends one critical 20,000-token request with `cachedOnA` blocks on a.
   */
  const attempt = (cachedOnA: number, queuedOnA = 1000, decodeOnA = 0) => {
    const { flow: f } = flow(t, {
      saturation: { default: { prefillTokens: 1000, decodeBlocks: 500 } },
      affinityWaitMs: 10_000,
    });
    const [a, b] = [worker('a'), worker('b')];
    saturate(a);
    saturate(b);
    const held = call(f, routed([a, b], strategy({}, 'a')), { 'x-kvgate-priority': 'sheddable' }).out;
    t.ok(held instanceof Promise, 'the gateway holds a request: overload');
    saturate(a, queuedOnA);
    a.localLoad.decodeBlocks = decodeOnA;
    saturate(b, 0);
    const critical = { 'x-kvgate-priority': 'critical' };
    const out = call(f, routed([a, b], strategy({ a: cachedOnA }, 'a'), 20_000), critical).out;
    const moved = () => (f.summary([a, b]) as { classes: { moved: { requests: number } }[] }).classes[0]!.moved;
    return { out, moved };
  };
  // All but 160 tokens cached on a: 1,000 queued + 160 there, against 20,000 on b.
  const joined = attempt(1240);
  t.notOk(joined.out instanceof Promise, 'not held');
  t.equal((joined.out as FlowPass).routed.worker.id, 'a', 'it joins a, saturated, where its prefix is');
  t.equal(joined.moved().requests, 0);

  const ahead = attempt(1240, 100_000);
  t.equal(
    (ahead.out as FlowPass).routed.worker.id,
    'b',
    "with 100,000 queued on a it moves at once: staying costs it more than b's recomputation costs everyone",
  );
  t.equal(ahead.moved().requests, 1, 'the move is counted');
  t.match((ahead.out as FlowPass).note, /move=faster/, 'as predicted faster, recomputation counted');

  const big = attempt(1000);
  t.ok(big.out instanceof Promise, 'with 4,000 uncached (more than one capacity to add to a) it waits for room on a');
  const little = attempt(1);
  t.equal(
    (little.out as FlowPass).routed.worker.id,
    'b',
    'with one cached block it moves at once: 1,000 queued ahead of it on a cost more than recomputing 16 tokens',
  );
  const decodeFull = attempt(1240, 1000, 500);
  t.ok(decodeFull.out instanceof Promise, 'with its decode side full a is not joined (the engine would preempt)');
});

t.test('fleet fairness: a tenant over its share does not move off its cache to be served sooner', async (t) => {
  const { flow: f } = flow(t, { saturation: NO_OVERFLOW, affinityWaitMs: 150, tenants: { fairness: 'fleet' } });
  const [a, b] = [worker('a'), worker('b')];
  const as = (tenant: string) => ({ 'x-kvgate-tenant': tenant });
  // Recent use: noisy 45,000 prompt tokens, quiet 500; noisy is over its half.
  for (let i = 0; i < 9; i++) call(f, routed([a, b], strategy(), 5000, as('noisy')), as('noisy'));
  call(f, routed([a, b], strategy(), 500, as('quiet')), as('quiet'));
  // Each with 100 blocks (1,600 tokens) cached on a, 3,000 queued there: staying costs 3,400,
  // moving to b 2,000, and nobody else wants b's room.
  const send = (tenant: string) => {
    saturate(a, 3000);
    saturate(b);
    const out = call(f, routed([a, b], strategy({ a: 100 }, 'a'), 2000, as(tenant)), as(tenant)).out;
    t.ok(out instanceof Promise, `${tenant}: held, every worker saturated`);
    saturate(b, 0);
    f.kick();
    return out as Promise<FlowPass | null>;
  };
  const started = Date.now();
  const quiet = await send('quiet');
  t.equal(quiet?.routed.worker.id, 'b', 'a tenant within its share moves at once');
  t.match(quiet?.note, /moved_from=a; lost_blocks=100; move=uncontested/, 'and the header says why');
  t.ok(Date.now() - started < 140);
  const noisyAt = Date.now();
  const noisy = await send('noisy');
  t.equal(noisy?.routed.worker.id, 'b', 'the over-share tenant waits for its cached worker, then moves');
  t.ok(Date.now() - noisyAt >= 140, 'not before affinityWaitMs');
  t.match(noisy?.note, /tenant=noisy; wait_ms=\d+; moved_from=a; lost_blocks=100; move=waited/);
});
