import t from 'tap';
import { WorkerBreaker, type BreakerState } from '../../../gateway/proxy/breaker.js';
import { backoffDelay, failureKind, retryableStatus } from '../../../gateway/proxy/retry.js';
import { SseFramer } from '../../../gateway/proxy/sse-framer.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function breaker(t: { teardown: (fn: () => unknown) => void }, failureThreshold = 3, openMs = 30) {
  const changes: BreakerState[] = [];
  const b = new WorkerBreaker('w', { enabled: true, failureThreshold, openMs }, (s) => changes.push(s));
  t.teardown(() => b.shutdown());
  return { b, changes };
}

t.test('opens after N consecutive failures; a success in between resets the count', async (t) => {
  const { b } = breaker(t);
  b.failed(b.pass(), 'connect');
  b.failed(b.pass(), 'connect');
  b.succeeded(b.pass()!);
  b.failed(b.pass(), 'timeout');
  b.failed(b.pass(), 'timeout');
  t.equal(b.state, 'closed', 'two in a row after a success');
  b.failed(b.pass(), 'status 503');
  t.equal(b.state, 'open');
  t.equal(b.allowsTraffic, false);
  t.equal(b.pass(), undefined, 'no traffic while open');
  t.equal(b.snapshot().lastFailure, 'status 503');
});

t.test('half-open admits exactly one probe; its success closes the breaker', async (t) => {
  const { b, changes } = breaker(t, 1);
  b.failed(b.pass(), 'connect');
  await sleep(80);
  t.equal(b.state, 'half-open');
  t.ok(b.allowsTraffic);
  const probe = b.pass()!;
  t.equal(probe.probe, true);
  t.equal(b.allowsTraffic, false, 'the probe slot is taken');
  t.equal(b.pass(), undefined, 'a second request is refused while the probe is out');
  b.succeeded(probe);
  t.equal(b.state, 'closed');
  t.ok(b.pass());
  t.same(b.snapshot().transitions, { closed: 1, 'half-open': 1, open: 1 });
  t.ok(changes.includes('open') && changes.includes('half-open') && changes.includes('closed'));
});

t.test('a failed probe re-opens it; a probe that says nothing frees the slot', async (t) => {
  const { b } = breaker(t, 1);
  b.failed(b.pass(), 'connect');
  await sleep(80);
  const probe = b.pass()!;
  b.released(probe);
  t.equal(b.state, 'half-open');
  t.ok(b.allowsTraffic, 'client abort: another probe may go');
  const second = b.pass()!;
  b.failed(second, 'reset');
  t.equal(b.state, 'open');
  t.equal(b.pass(), undefined);
  b.succeeded(second);
  t.equal(b.state, 'open', 'a pass settles once');
});

t.test('outcomes of requests sent before the breaker opened do not count again', async (t) => {
  const { b } = breaker(t, 2);
  const early = b.pass()!;
  b.failed(b.pass(), 'x');
  b.failed(b.pass(), 'x');
  t.equal(b.state, 'open');
  b.succeeded(early);
  t.equal(b.state, 'open', 'a late success of an old request does not close it');
});

t.test('retry helpers', async (t) => {
  t.ok(retryableStatus(502) && retryableStatus(503));
  t.notOk(retryableStatus(500) || retryableStatus(504) || retryableStatus(429));
  const err = (code: string) => Object.assign(new Error(code), { code });
  t.equal(failureKind(err('ECONNREFUSED')), 'connect');
  t.equal(failureKind(err('UND_ERR_HEADERS_TIMEOUT')), 'timeout');
  t.equal(failureKind(err('UND_ERR_SOCKET')), 'reset');
  const config = { attempts: 2, backoffMs: 50, maxBackoffMs: 120 };
  t.equal(
    backoffDelay(config, 1, () => 0.5),
    50,
  );
  t.equal(
    backoffDelay(config, 2, () => 0),
    50,
    '100 ms, jittered down to half',
  );
  t.equal(
    backoffDelay(config, 3, () => 0.5),
    120,
    'capped',
  );
});

t.test('SSE framing keeps the error event on an event boundary', async (t) => {
  const f = new SseFramer();
  t.equal(f.push(Buffer.from('data: {"a":1}\n\n')).toString(), 'data: {"a":1}\n\n', 'whole events pass');
  t.equal(f.push(Buffer.from('data: {"b":')).length, 0, 'half an event is held');
  t.equal(f.push(Buffer.from('2}\n\ndata: {"c"')).toString(), 'data: {"b":2}\n\n');
  t.equal(f.errorEvent('{"error":{}}'), 'data: {"error":{}}\n\n', 'the held half is dropped, the error stands alone');
  const g = new SseFramer();
  g.push(Buffer.from('data: x'));
  t.equal(g.flush()?.toString(), 'data: x', 'a normal end flushes what was held');
  const h = new SseFramer();
  t.equal(h.push(Buffer.alloc(70_000, 'a')).length, 70_000, 'no boundary for too long: passed on');
  t.equal(h.errorEvent('{}'), '\n\ndata: {}\n\n', 'then the error event starts a fresh event');
});
