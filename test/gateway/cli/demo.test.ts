import t from 'tap';
import { spawnSync } from 'node:child_process';
import OpenAI from 'openai';
import { CLI, startCli } from '../../fixtures/processes.js';

/** `npm start` runs `kvgate demo`: simulated workers with KV events behind the gateway with `kv` routing. */
t.test('kvgate demo serves the openai client through kv routing, and stops cleanly', async (t) => {
  const demo = startCli(['demo', '--workers', '2', '--port', '0', '--admin-port', '0', '--speedup', '20']);
  t.teardown(() => demo.stop());
  // Stdout in the order it was written: the banner must come after the start-up log lines, not among them.
  let stdout = '';
  demo.child.stdout?.on('data', (d: Buffer) => (stdout += String(d)));
  const [ready] = await demo.waitFor('gateway ready', 1, 45_000);
  const client = new OpenAI({ baseURL: `${ready!.url as string}/v1`, apiKey: 'unused', maxRetries: 0 });
  const { data, response } = await client.chat.completions
    .create({ model: 'Qwen/Qwen3-0.6B', messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 8 })
    .withResponse();
  t.equal(data.usage?.completion_tokens, 8);
  t.equal(response.headers.get('x-kvgate-strategy'), 'kv');
  t.match(response.headers.get('x-kvgate-worker'), /^sim-[01]$/);
  t.match(demo.text.join('\n'), /curl -s http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions/, 'it prints what to curl');
  const banner = stdout.indexOf('kvgate demo:');
  const end = stdout.indexOf('Ctrl-C stops', banner);
  t.ok(banner > stdout.indexOf('"gateway ready"'), 'the banner follows the ready line');
  t.notMatch(stdout.slice(banner, end), /"level"/, 'no log line inside the banner');

  // The client sends the id with its slash encoded (/v1/models/Qwen%2FQwen3-0.6B).
  const model = await client.models.retrieve('Qwen/Qwen3-0.6B');
  t.equal(model.id, 'Qwen/Qwen3-0.6B');
  t.equal(model.object, 'model');

  // A second demo on the same port: one line naming the flag, exit 2, and its workers stopped.
  const port = new URL(ready!.url as string).port;
  const second = spawnSync(process.execPath, [CLI, 'demo', '--workers', '1', '--port', port, '--admin-port', '0'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.equal(second.status, 2, second.stderr);
  t.equal(second.stderr.trim().split('\n').length, 1, second.stderr);
  t.match(
    second.stderr,
    new RegExp(`^kvgate demo: --port ${port}: .*address already in use \\(is another kvgate demo running`),
  );

  t.equal(await demo.stop('SIGINT'), 0, 'Ctrl-C stops the gateway and the workers');
});
