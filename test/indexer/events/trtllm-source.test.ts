import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { createEventSource, eventSourceConfigSchema } from '../../../indexer/events/create-source.js';
import { TrtllmPollSource } from '../../../indexer/events/trtllm-source.js';
import { ZmqEventSource } from '../../../indexer/events/zmq-source.js';
import { RecordingSink } from '../../fixtures/wire/recording-sink.js';

const stored = (id: number | string, hash: string, tokens: number[]) =>
  `{"event_id": ${id}, "window_size": 64, "data": {"type": "stored", "parent_hash": null, "blocks": [{"type": "stored_block", "block_hash": ${hash}, "tokens": [${tokens.map((x) => `{"type": "unique_token", "token_id": ${x}, "token_extra_id": 0}`).join(',')}], "cache_level": 0}]}}`;

/** A stand-in for trtllm-serve: each POST /kv_cache_events drains the queued responses, like the real endpoint. */
async function fakeTrtllm(t: Test) {
  const queue: string[] = [];
  let polls = 0;
  let failNext = 0;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    if (req.method !== 'POST' || req.url !== '/kv_cache_events') {
      res.writeHead(404).end();
      return;
    }
    polls++;
    if (failNext > 0) {
      failNext--;
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"detail":"boom"}');
      return;
    }
    const events = queue.splice(0);
    res.writeHead(200, { 'content-type': 'application/json' }).end(`[${events.join(',')}]`);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    queue,
    polls: () => polls,
    fail: (n: number) => {
      failNext = n;
    },
  };
}

t.test('polls, decodes big hashes exactly, resets on id jumps and restarts', async (t) => {
  const engine = await fakeTrtllm(t);
  const sink = new RecordingSink();
  const source = new TrtllmPollSource({ workerId: 'trt', url: `${engine.url}/`, intervalMs: 10 });
  t.teardown(() => source.stop());
  await source.start(sink);
  engine.queue.push(`{"event_id": 0, "data": {"type": "created", "num_blocks_per_cache_level": [100, 0]}}`);
  engine.queue.push(stored(1, '18446744073709551615', [1, 2, 3, 4]));
  engine.queue.push(stored(2, '-9223372036854775808', [5, 6, 7, 8]));
  await sink.until(() => sink.batches.length === 2, 'two stored batches');
  const ev = sink.batches.map((b) => b.events[0]);
  t.strictSame(
    ev.map((e) => e!.kind === 'stored' && e!.engineHashes[0]),
    [18446744073709551615n, -9223372036854775808n],
  );
  t.strictSame(
    sink.batches.map((b) => b.seq),
    [1n, 2n],
  );
  t.equal(source.stats().lastSeq, 2n);
  t.equal(source.stats().connected, true);

  engine.queue.push(stored(5, '7', [1, 2, 3, 4])); // ids 3 and 4 lost in the engine's queue
  await sink.until(() => sink.resets.length === 1, 'a reset for the gap');
  t.match(sink.resets[0], /jumped from 2 to 5/);
  engine.queue.push(stored(0, '8', [1, 2, 3, 4])); // engine restarted
  await sink.until(() => sink.resets.length === 2, 'a reset for the restart');
  t.match(sink.resets[1], /backwards/);
  await sink.until(() => sink.batches.length === 4, 'batches after the resets');
  const s = source.stats();
  t.equal(s.gaps, 1);
  t.equal(s.resets, 2);
  t.equal(s.batchesApplied, 4);

  engine.queue.push('{"event_id": "not json');
  await sink.until(() => source.stats().decodeErrors === 1, 'a decode error');
  engine.queue.push(stored(1, '9', [1, 2, 3, 4]));
  await sink.until(() => sink.batches.length === 5, 'a batch after the decode error');
});

t.test('backs off while the engine fails, recovers after', async (t) => {
  const engine = await fakeTrtllm(t);
  const sink = new RecordingSink();
  const source = new TrtllmPollSource({ workerId: 'trt', url: engine.url, intervalMs: 20, maxBackoffMs: 200 });
  t.teardown(() => source.stop());
  engine.fail(3);
  await source.start(sink);
  await sink.until(() => source.stats().failures >= 2, 'failures');
  t.equal(source.stats().connected, false);
  engine.queue.push(stored(0, '1', [1, 2]));
  await sink.until(() => sink.batches.length === 1, 'the batch after recovery', 10_000);
  t.equal(source.stats().failures, 0);
  t.ok(engine.polls() >= 4);
});

t.test('an engine that is down does not block start or stop', async (t) => {
  const source = new TrtllmPollSource({ workerId: 'down', url: 'http://127.0.0.1:9', intervalMs: 10 });
  const t0 = Date.now();
  await source.start(new RecordingSink());
  await new Promise((r) => setTimeout(r, 150));
  await source.stop();
  t.ok(Date.now() - t0 < 3000);
  t.ok(source.stats().failures >= 1);
});

t.test('config schema and factory', async (t) => {
  const zmq = eventSourceConfigSchema.parse({ endpoint: 'tcp://w1:5557', replayEndpoint: 'tcp://w1:5558' });
  t.strictSame(zmq, {
    type: 'zmq',
    endpoint: 'tcp://w1:5557',
    replayEndpoint: 'tcp://w1:5558',
    topic: '',
    mode: 'connect',
    format: 'msgpack',
    replayTimeoutMs: 2000,
    probeIntervalMs: 5000,
  });
  t.strictSame(eventSourceConfigSchema.parse({ type: 'trtllm-http' }), {
    type: 'trtllm-http',
    intervalMs: 100,
    format: 'trtllm-json',
  });
  t.throws(() => eventSourceConfigSchema.parse({ endpoint: 'tcp://w1:5557', format: 'protobuf' }), /format/);
  t.throws(() => eventSourceConfigSchema.parse({ endpoint: 'http://w1:5557' }), /ZeroMQ endpoint/);
  t.throws(() => eventSourceConfigSchema.parse({ type: 'nats', endpoint: 'x' }));
  t.throws(() => eventSourceConfigSchema.parse({ endpoint: 'tcp://w1:5557', typo: 1 }));
  t.ok(createEventSource({ endpoint: 'tcp://127.0.0.1:5557' }, 'w1') instanceof ZmqEventSource);
  const trt = createEventSource({ type: 'trtllm-http' }, 'w2', undefined, { workerUrl: 'http://127.0.0.1:8000' });
  t.ok(trt instanceof TrtllmPollSource);
  t.equal(trt.stats().endpoint, 'http://127.0.0.1:8000/kv_cache_events');
  t.throws(() => createEventSource({ type: 'trtllm-http' }, 'w3'), /need a url/);
});
