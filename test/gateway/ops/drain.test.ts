import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/** A raw keep-alive connection, so the test controls what goes over it and sees every byte back. */
function rawClient(url: string): Promise<{ socket: Socket; text: () => string; ended: Promise<void> }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () =>
      resolve({ socket, text: () => Buffer.concat(chunks).toString('utf8'), ended }),
    );
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    const ended = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('error', reject);
  });
}

const streamRequest = (maxTokens: number) => {
  const body = JSON.stringify({
    model: MODEL,
    stream: true,
    max_tokens: maxTokens,
    ignore_eos: true,
    messages: [{ role: 'user', content: 'Tell me a long story about a lighthouse.' }],
  });
  return `POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
};

/** A gateway with a drain timeout and one streaming request in flight through it, its first event received. */
async function gatewayWithStream(t: Test, drainTimeoutMs: number, maxTokens: number) {
  const { workers } = await startSim(t.teardown.bind(t), 1, ['--decode-base-ms', '25']);
  const g = await startGateway(
    t.teardown.bind(t),
    fleetConfig(workers, { strategy: 'least-load' }, { server: { host: '127.0.0.1', drainTimeoutMs } }),
  );
  const c = await rawClient(g.url);
  t.teardown(() => c.socket.destroy());
  c.socket.write(streamRequest(maxTokens));
  const deadline = Date.now() + 15_000;
  while (!c.text().includes('data: {') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return { g, c };
}

async function refused(url: string): Promise<string> {
  try {
    await request(`${url}/health`, { headersTimeout: 2000 });
    return 'answered';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

t.test('SIGTERM: the stream in flight completes, /ready says 503, new connections are refused, exit 0', async (t) => {
  const { g, c } = await gatewayWithStream(t, 20_000, 80);
  t.ok(c.text().includes('data: {'), 'the stream has started');

  const sent = Date.now();
  g.gateway.child.kill('SIGTERM');
  await g.gateway.waitFor('gateway draining', 1, 10_000);
  // A second request on the busy connection: it is answered after the stream, as draining.
  c.socket.write('GET /ready HTTP/1.1\r\nhost: gw\r\n\r\n');
  t.equal(await refused(g.url), 'ECONNREFUSED', 'a new connection is refused');
  t.equal(g.gateway.child.exitCode, null, 'still running while the stream goes on');

  await c.ended;
  const text = c.text();
  const [stream, ready] = text.split(/(?=HTTP\/1\.1 503)/);
  t.match(stream, /^HTTP\/1\.1 200 /, 'the stream answered 200');
  t.ok(stream!.includes('data: [DONE]'), 'and ended normally with data: [DONE]');
  t.notOk(stream!.includes('"error"'), 'no error event');
  t.match(ready ?? '', /^HTTP\/1\.1 503 /, '/ready answers 503 while draining');
  t.match(ready ?? '', /connection: close/i, 'with connection: close');
  t.match(ready ?? '', /"draining":true/);
  const code = await g.gateway.exited;
  t.equal(code, 0, 'exit 0');
  t.ok(Date.now() - sent < 20_000, `exited within the drain timeout (${Date.now() - sent} ms)`);
  t.ok(
    g.gateway.lines.some((l) => l.msg === 'gateway drained' && l.cut === 0),
    'nothing was cut',
  );
});

t.test('the drain timeout cuts what is left, and the process still exits 0', async (t) => {
  const { g, c } = await gatewayWithStream(t, 500, 2000);
  const sent = Date.now();
  g.gateway.child.kill('SIGTERM');
  t.equal(await g.gateway.exited, 0, 'exit 0');
  t.ok(Date.now() - sent < 10_000, `soon after the timeout (${Date.now() - sent} ms)`);
  await c.ended;
  t.notOk(c.text().includes('data: [DONE]'), 'the long stream was cut');
  t.ok(
    g.gateway.lines.some((l) => l.msg === 'gateway drained' && l.cut === 1),
    'one request cut',
  );
});
