import t from 'tap';
import { FlowQueue, type QueueItem } from '../../../gateway/flow/queue.js';

interface Item extends QueueItem {
  name: string;
}

let seq = 0;
const item = (name: string, rank: number, tenant: string, o: Partial<QueueItem> = {}): Item => {
  const s = seq++;
  return {
    name,
    rank,
    tenant,
    weight: 1,
    arrival: s,
    deadline: s + 1_000_000,
    sheddable: false,
    seq: s,
    ...o,
  };
};

const drain = (q: FlowQueue<Item>, canGo: (i: Item) => boolean = () => true): string[] => {
  const out: string[] = [];
  for (let i = q.next(canGo); i; i = q.next(canGo)) out.push(i.name);
  return out;
};

t.test('a higher class always goes first, whatever arrived earlier', async (t) => {
  const q = new FlowQueue<Item>(3);
  q.push(item('shed-1', 2, 'a'));
  q.push(item('std-1', 1, 'a'));
  q.push(item('crit-1', 0, 'b'));
  q.push(item('std-2', 1, 'b'));
  q.push(item('crit-2', 0, 'a'));
  t.same(drain(q), ['crit-1', 'crit-2', 'std-1', 'std-2', 'shed-1']);
  t.equal(q.size, 0);
});

t.test('tenants share a class in round robin: a tenant sending ten times more waits behind itself only', async (t) => {
  const q = new FlowQueue<Item>(1);
  for (let i = 0; i < 10; i++) q.push(item(`noisy-${i}`, 0, 'noisy'));
  q.push(item('quiet-0', 0, 'quiet'));
  q.push(item('quiet-1', 0, 'quiet'));
  const order = drain(q);
  t.ok(order.indexOf('quiet-0') <= 1, `quiet's first request is among the first two: ${order.join(' ')}`);
  t.ok(order.indexOf('quiet-1') <= 3, `quiet's second among the first four: ${order.join(' ')}`);
  t.same(
    order.filter((n) => n.startsWith('noisy')),
    Array.from({ length: 10 }, (_, i) => `noisy-${i}`),
    "the noisy tenant's own requests keep their order",
  );
});

t.test('weights set the shares: weight 2 gets two turns for one', async (t) => {
  const q = new FlowQueue<Item>(1);
  for (let i = 0; i < 6; i++) q.push(item(`heavy-${i}`, 0, 'heavy', { weight: 2 }));
  for (let i = 0; i < 6; i++) q.push(item(`light-${i}`, 0, 'light'));
  const first6 = drain(q).slice(0, 6);
  t.equal(first6.filter((n) => n.startsWith('heavy')).length, 4, first6.join(' '));
  const q2 = new FlowQueue<Item>(1);
  for (let i = 0; i < 4; i++) q2.push(item(`tiny-${i}`, 0, 'tiny', { weight: 0.25 }));
  for (let i = 0; i < 8; i++) q2.push(item(`full-${i}`, 0, 'full'));
  const order = drain(q2);
  t.equal(order.length, 12, 'a fractional weight still drains');
  t.ok(order.slice(0, 5).filter((n) => n.startsWith('full')).length >= 3, order.join(' '));
});

t.test('inside a tenant, the earliest deadline goes first; equal deadlines first come first served', async (t) => {
  const q = new FlowQueue<Item>(1);
  q.push(item('late', 0, 'a', { deadline: 5000 }));
  q.push(item('fifo-1', 0, 'a', { deadline: 9000 }));
  q.push(item('urgent', 0, 'a', { deadline: 100 }));
  q.push(item('fifo-2', 0, 'a', { deadline: 9000 }));
  t.same(drain(q), ['urgent', 'late', 'fifo-1', 'fifo-2']);
});

t.test('a tenant whose head cannot go is passed over without losing its place', async (t) => {
  const q = new FlowQueue<Item>(2);
  q.push(item('a-blocked', 0, 'a'));
  q.push(item('b-1', 0, 'b'));
  q.push(item('low', 1, 'c'));
  const blocked = new Set(['a-blocked']);
  t.equal(q.next((i) => !blocked.has(i.name))?.name, 'b-1');
  t.equal(q.next((i) => !blocked.has(i.name))?.name, 'low', 'a lower class goes when the higher one is all blocked');
  t.equal(
    q.next((i) => !blocked.has(i.name)),
    undefined,
  );
  blocked.clear();
  t.equal(q.next(() => true)?.name, 'a-blocked');
});

t.test('remove, and the oldest sheddable request below a class', async (t) => {
  const q = new FlowQueue<Item>(3);
  const s1 = item('s1', 2, 'x', { sheddable: true });
  const s2 = item('s2', 2, 'y', { sheddable: true });
  const std = item('std', 1, 'x');
  q.push(s2);
  q.push(std);
  q.push(s1);
  t.equal(q.oldestSheddableBelow(0)?.name, 's1', 'the longest waiting (not the last pushed), across tenants');
  t.equal(q.oldestSheddableBelow(2), undefined, 'nothing below the lowest class');
  t.ok(q.remove(s1));
  t.notOk(q.remove(s1), 'removing twice is a no-op');
  t.equal(q.oldestSheddableBelow(0)?.name, 's2');
  t.equal(q.size, 2);
  t.same(drain(q), ['std', 's2']);
});

t.test('prefer: within a class a preferred head goes out of turn, charged to its tenant', async (t) => {
  const q = new FlowQueue<Item>(2);
  q.push(item('crit', 0, 'c'));
  q.push(item('a-1', 1, 'a'));
  q.push(item('b-1', 1, 'b'));
  q.push(item('a-2', 1, 'a'));
  q.push(item('b-2', 1, 'b'));
  const cached = new Set(['b-1']);
  const prefer = (i: Item) => cached.has(i.name);
  t.equal(q.next(() => true, prefer)?.name, 'crit', 'a higher class still goes first');
  t.equal(q.next(() => true, prefer)?.name, 'b-1', "b's head is preferred over a's turn");
  t.equal(q.next(() => true, prefer)?.name, 'a-1', 'a keeps its place in the round robin');
  t.equal(q.next(() => true, prefer)?.name, 'a-2', 'b spent its turn on the preferred request');
  t.equal(q.next(() => true, prefer)?.name, 'b-2');
});

t.test('fallback: a class is asked again before the turn goes to a lower one', async (t) => {
  const q = new FlowQueue<Item>(2);
  q.push(item('high-waiting', 0, 'a'));
  q.push(item('low-ready', 1, 'b'));
  const ready = (i: Item) => i.name === 'low-ready';
  t.equal(q.next(ready, undefined, () => true)?.name, 'high-waiting');
  t.equal(q.next(ready, undefined, () => true)?.name, 'low-ready');
});
