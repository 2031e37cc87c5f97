import t from 'tap';
import { PrefixMemo } from '../../../indexer/tokenize/prefix-memo.js';

const M = '<|im_start|>';
const filler = (n: number, c = 'x') => c.repeat(n);
const ids = (n: number, base = 0) => Array.from({ length: n }, (_, i) => base + i);

t.test('finds the remembered prefix at a marker and not a text that only shares its key', (t) => {
  const memo = new PrefixMemo(1 << 20);
  const prev = `${filler(3000)}${M}assistant\n`;
  memo.remember(prev, 3000, M, ids(10), 0, 7);
  t.equal(memo.find(`${filler(2000)}`), undefined, 'short texts skip the memo');

  const next = `${filler(3000)}${M}assistant\nanswer${M}user\nq${M}assistant\n`;
  const hit = memo.find(next);
  t.equal(hit?.length, 3000);
  t.same([...hit!.ids], ids(7));

  // Same length and the same 64 characters before the marker, different start: the key matches, the text does not.
  const other = `y${filler(2999)}${M}assistant\n`;
  t.equal(memo.find(other), undefined);
  t.same(memo.stats.hits, 1);
  t.same(memo.stats.misses, 1, 'short texts are not lookups');
  t.end();
});

t.test('takes the longest prefix; a longer one replaces the one it extends', (t) => {
  const memo = new PrefixMemo(1 << 20);
  const base = `${filler(3000)}${M}a${M}b`;
  memo.remember(base, 3000, M, ids(5), 0, 5);
  const longer = `${base}${M}c`;
  const first = memo.find(longer)!;
  t.equal(first.length, 3000);
  memo.remember(longer, base.length, M, ids(9), 1, 8, first.key);
  const hit = memo.find(`${longer}${M}d`)!;
  t.equal(hit.length, base.length);
  t.same([...hit.ids], ids(8, 1), 'ids taken from the given offset');
  t.equal(memo.stats.entries, 1, 'the shorter entry was dropped');
  t.end();
});

t.test('tries only the last few markers, and stays within its byte bound', (t) => {
  const memo = new PrefixMemo(64 * 1024);
  const head = filler(3000);
  memo.remember(`${head}${M}`, 3000, M, ids(4), 0, 4);
  t.ok(memo.find(`${head}${M}1${M}2${M}3${M}4${M}5${M}6${M}7`), 'seven messages later: found');
  t.equal(memo.find(`${head}${M}1${M}2${M}3${M}4${M}5${M}6${M}7${M}8${M}9`), undefined, 'too many messages later');
  for (let i = 0; i < 50; i++)
    memo.remember(`${filler(3000, String.fromCharCode(97 + (i % 26)))}${i}${M}`, 3002, M, ids(100), 0, 100);
  t.ok(memo.stats.bytes <= 64 * 1024, `${memo.stats.bytes} bytes`);
  memo.clear();
  t.equal(memo.stats.entries, 0);
  t.end();
});
