import t from 'tap';
import OpenAI from 'openai';
import { startCli } from '../../fixtures/processes.js';

/** `npm start` runs `kvgate demo`: simulated workers with KV events behind the gateway with `kv` routing. */
t.test('kvgate demo serves the openai client through kv routing, and stops cleanly', async (t) => {
  const demo = startCli(['demo', '--workers', '2', '--port', '0', '--admin-port', '0', '--speedup', '20']);
  t.teardown(() => demo.stop());
  const [ready] = await demo.waitFor('gateway ready', 1, 45_000);
  const client = new OpenAI({ baseURL: `${ready!.url as string}/v1`, apiKey: 'unused', maxRetries: 0 });
  const { data, response } = await client.chat.completions
    .create({ model: 'Qwen/Qwen3-0.6B', messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 8 })
    .withResponse();
  t.equal(data.usage?.completion_tokens, 8);
  t.equal(response.headers.get('x-kvgate-strategy'), 'kv');
  t.match(response.headers.get('x-kvgate-worker'), /^sim-[01]$/);
  t.match(demo.text.join('\n'), /curl -s http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions/, 'it prints what to curl');
  t.equal(await demo.stop('SIGINT'), 0, 'Ctrl-C stops the gateway and the workers');
});
