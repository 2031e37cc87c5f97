import t from 'tap';
import { U64Table, joinU64, splitU64 } from '../../../indexer/index/u64-table.js';

t.test("split and join are exact, negative int64 wraps to its two's complement", async (t) => {
  const hl = new Uint32Array(2);
  splitU64(0x0123456789abcdefn, hl);
  t.same([hl[0], hl[1]], [0x89abcdef, 0x01234567]);
  t.equal(joinU64(hl[0]!, hl[1]!), 0x0123456789abcdefn);
  splitU64(-1n, hl);
  t.same([hl[0], hl[1]], [0xffffffff, 0xffffffff]);
});

t.test('set/get/delete agree with a Map under random churn (backward-shift deletion)', async (t) => {
  const table = new U64Table();
  const ref = new Map<string, number>();
  let x = 12345;
  const rnd = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
  let deleteMismatches = 0;
  for (let i = 0; i < 50_000; i++) {
    // Small key space so that deletes and overwrites hit; hi often 0 like small engine ids.
    const lo = rnd() % 3000;
    const hi = rnd() % 3 === 0 ? rnd() : 0;
    const k = `${lo}:${hi}`;
    if (rnd() % 3 === 0) {
      if (table.delete(lo, hi) !== ref.delete(k)) deleteMismatches++;
    } else {
      table.set(lo, hi, i, i ^ 7);
      ref.set(k, i);
    }
  }
  t.equal(deleteMismatches, 0, 'delete finds exactly the keys present');
  t.equal(table.size, ref.size);
  let ok = true;
  for (const [k, v] of ref) {
    const [lo, hi] = k.split(':').map(Number) as [number, number];
    const slot = table.find(lo, hi);
    if (table.valueAt(slot) !== v || table.checkAt(slot) !== (v ^ 7)) ok = false;
  }
  t.ok(ok, 'every key found with its value and check');
  let n = 0;
  table.forEach(() => n++);
  t.equal(n, ref.size);
  for (const k of ref.keys()) {
    const [lo, hi] = k.split(':').map(Number) as [number, number];
    table.delete(lo, hi);
  }
  t.equal(table.size, 0);
  t.ok(table.capacity <= 64, 'shrinks when emptied');
  t.equal(table.get(1, 0), -1);
});
