import t from 'tap';
import { TenantShares } from '../../../gateway/flow/tenant-share.js';

const shares = (tolerance = 1.25) => new TenantShares({ halfLifeMs: 1000, tolerance });

t.test('a tenant above tolerance x its fair share is over it; the others are not', async (t) => {
  const s = shares();
  s.dispatched('noisy', 'noisy', 1, 600, 0);
  for (const q of ['a', 'b', 'c']) s.dispatched(q, q, 1, 130, 0);
  // noisy: 600 / 990 = 61% against a fair 25%; the others 13%.
  t.same([...s.overShare(0)], ['noisy']);
  const snap = s.snapshot(0);
  t.match(
    snap.find((x) => x.tenant === 'noisy'),
    { useShare: 0.606, fairShare: 0.25, overShare: true },
  );
  t.match(
    snap.find((x) => x.tenant === 'a'),
    { useShare: 0.131, overShare: false },
  );
});

t.test('the tolerance leaves room for uneven but modest tenants', async (t) => {
  const s = shares(1.25);
  // 36% / 34% / 30% of use among three: 1.08x the fair third at most.
  s.dispatched('gamma', 'gamma', 1, 36, 0);
  s.dispatched('beta', 'beta', 1, 34, 0);
  s.dispatched('alpha', 'alpha', 1, 30, 0);
  t.equal(s.overShare(0).size, 0);
  t.same([...shares(1).overShare(0)], [], 'an empty tracker has nobody over');
  const strict = shares(1);
  strict.dispatched('gamma', 'gamma', 1, 36, 0);
  strict.dispatched('alpha', 'alpha', 1, 30, 0);
  t.same([...strict.overShare(0)], ['gamma'], 'tolerance 1: any tenant above an even split');
});

t.test('weights set the fair share', async (t) => {
  const s = shares();
  s.dispatched('big', 'big', 3, 700, 0);
  s.dispatched('small', 'small', 1, 300, 0);
  t.equal(s.overShare(0).size, 0, '70% against a fair 75% is within');
  s.dispatched('big', 'big', 1, 700, 0);
  t.same([...s.overShare(0)], ['big'], 'at weight 1 the same use is over a fair half');
});

t.test('a lone tenant is never over; a queued tenant with no use yet counts as active', async (t) => {
  const s = shares();
  s.dispatched('only', 'only', 1, 1e6, 0);
  t.equal(s.overShare(0).size, 0, 'nobody to be unfair to');
  s.queued('starved', 'starved', 1, 1, 0);
  t.same([...s.overShare(0)], ['only'], 'a waiting tenant halves the fair share');
  s.queued('starved', 'starved', 1, -1, 0);
  t.equal(s.overShare(0).size, 0, 'once it left the queue with no use, it is gone');
});

t.test('use decays with the half-life: a burst long ago no longer counts', async (t) => {
  const s = shares();
  s.dispatched('burst', 'burst', 1, 1000, 0);
  s.dispatched('steady', 'steady', 1, 100, 0);
  t.same([...s.overShare(0)], ['burst']);
  // Ten half-lives later the burst weighs ~1 token; the steady tenant keeps sending.
  s.dispatched('steady', 'steady', 1, 100, 10_000);
  t.same([...s.overShare(10_000)], ['steady'], 'now the steady tenant is the one above an even split');
  t.equal(s.snapshot(10_000).length, 2, 'the old tenant still shows while above a thousandth of the total');
  s.dispatched('steady', 'steady', 1, 1e6, 10_000);
  t.same(
    s.snapshot(10_000).map((x) => x.tenant),
    ['steady'],
    'below a thousandth it is forgotten',
  );
});
