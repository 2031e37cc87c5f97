import t from 'tap';
import { parseResponses, ResponseRecorder, ResponseStore } from '../../../../gateway/front/routes/responses.js';
import type { GatewayError } from '../../../../gateway/front/errors.js';

const config = { maxStored: 2, ttlMs: 1000, maxCapturedBytes: 4096 };
const sink = { data() {}, end() {} };
const body = (b: unknown) => Buffer.from(JSON.stringify(b));

void t.test(
  'the recorder learns id and output from JSON and SSE answers; the next turn is pinned and prefixed',
  (t) => {
    const store = new ResponseStore(config);
    const first = parseResponses(body({ model: 'm', instructions: 'sys', input: 'hi' }), store);
    t.equal(first.pinned, undefined);
    const rec = new ResponseRecorder(sink, store, first.messages);
    rec.worker = 'w1';
    const answer = { id: 'resp_1', output: [{ type: 'message', content: [{ type: 'output_text', text: 'hello' }] }] };
    rec.data(Buffer.from(JSON.stringify(answer)));
    rec.end(200);
    const next = parseResponses(body({ model: 'm', previous_response_id: 'resp_1', input: 'again' }), store);
    t.same(next.pinned, { worker: 'w1', responseId: 'resp_1' });
    t.same(next.request.body.messages, [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
      { role: 'user', content: 'again' },
    ]);

    const sse = new ResponseRecorder(sink, store, next.messages);
    sse.worker = 'w1';
    sse.data(Buffer.from('event: response.created\ndata: {"type":"response.created","response":{"id":"resp_2"}}\n\n'));
    const done = { type: 'response.completed', response: { ...answer, id: 'resp_2' } };
    sse.data(Buffer.from(`event: response.completed\ndata: ${JSON.stringify(done)}\n\n`));
    sse.end(200);
    t.equal(store.get('resp_2')?.worker, 'w1');

    const failed = new ResponseRecorder(sink, store, undefined);
    failed.worker = 'w2';
    failed.data(Buffer.from('{"id":"resp_3"}'));
    failed.end(500);
    t.equal(store.get('resp_3'), undefined, 'errors are not remembered');
    t.end();
  },
);

void t.test('the store is bounded and expires', (t) => {
  let now = 1000; // lru-cache reads a start time of 0 as "no start"
  const store = new ResponseStore(config, () => now);
  store.set('a', { worker: 'w', messages: undefined });
  store.set('b', { worker: 'w', messages: undefined });
  store.set('c', { worker: 'w', messages: undefined });
  t.equal(store.get('a'), undefined, 'the oldest is dropped beyond maxStored');
  now = 5000 + 1000;
  t.equal(store.get('c'), undefined, 'entries expire');
  t.end();
});

void t.test('bad Responses bodies are 400s naming the field', (t) => {
  const store = new ResponseStore(config);
  const cases: [unknown, string][] = [
    [{ input: 'x' }, 'model'],
    [{ model: 'm' }, 'input'],
    [{ model: 'm', input: 3 }, 'input'],
    [{ model: 'm', input: 'x', previous_response_id: 5 }, 'previous_response_id'],
  ];
  for (const [b, param] of cases) {
    try {
      parseResponses(body(b), store);
      t.fail(`accepted ${JSON.stringify(b)}`);
    } catch (err) {
      t.equal((err as GatewayError).status, 400);
      t.equal((err as GatewayError).param, param);
    }
  }
  t.end();
});
