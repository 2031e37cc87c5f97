import t from 'tap';
import { UsageSniffer } from '../../../gateway/proxy/usage-sniffer.js';

const jsonBody = JSON.stringify({
  id: 'cmpl-1',
  object: 'chat.completion',
  model: 'm',
  choices: [
    {
      index: 0,
      message: { role: 'assistant', content: 'the "cached_tokens": 999 trick and "prompt_tokens": 5 inside text' },
      finish_reason: 'stop',
    },
  ],
  usage: {
    prompt_tokens: 1234,
    total_tokens: 1240,
    completion_tokens: 6,
    prompt_tokens_details: { cached_tokens: 1008 },
  },
});

const sse = [
  ...Array.from(
    { length: 5 },
    (_, i) =>
      `data: ${JSON.stringify({ id: 'c', choices: [{ index: 0, delta: { content: `tok${i} "cached_tokens": 7` } }] })}\n\n`,
  ),
  `data: ${JSON.stringify({ id: 'c', choices: [], usage: { prompt_tokens: 4096, completion_tokens: 5, total_tokens: 4101, prompt_tokens_details: { cached_tokens: 3072 } } })}\n\n`,
  'data: [DONE]\n\n',
].join('');

const scanIn = (text: string, cuts: number[]) => {
  const buf = Buffer.from(text);
  const s = new UsageSniffer();
  let at = 0;
  for (const cut of [...cuts, buf.length]) {
    s.scan(buf.subarray(at, cut));
    at = cut;
  }
  return s;
};

t.test('a JSON body in one chunk; quoted names inside generated text never match', async (t) => {
  const s = scanIn(jsonBody, []);
  t.equal(s.cachedTokens, 1008);
  t.equal(s.promptTokens, 1234);
});

t.test('a JSON body split at every single byte position', async (t) => {
  for (let cut = 1; cut < Buffer.byteLength(jsonBody); cut++) {
    const s = scanIn(jsonBody, [cut]);
    if (s.cachedTokens !== 1008 || s.promptTokens !== 1234)
      t.fail(`split at ${cut}: ${s.promptTokens}/${s.cachedTokens}`);
  }
  t.pass('every split reads 1234 / 1008');
});

t.test('an SSE stream: the final usage chunk wins, in any chunking, even one byte at a time', async (t) => {
  t.same([scanIn(sse, []).promptTokens, scanIn(sse, []).cachedTokens], [4096, 3072]);
  const bytes = Buffer.byteLength(sse);
  const s = scanIn(
    sse,
    Array.from({ length: bytes - 1 }, (_, i) => i + 1),
  );
  t.same([s.promptTokens, s.cachedTokens], [4096, 3072], 'one byte per chunk');
  for (const size of [2, 3, 7, 16, 63, 64, 65, 100]) {
    const cuts = [];
    for (let c = size; c < bytes; c += size) cuts.push(c);
    const r = scanIn(sse, cuts);
    t.same([r.promptTokens, r.cachedTokens], [4096, 3072], `${size}-byte chunks`);
  }
});

t.test('no usage, or usage without details, leaves the fields unset', async (t) => {
  t.equal(scanIn('data: {"choices":[]}\n\ndata: [DONE]\n\n', []).cachedTokens, undefined);
  const s = scanIn('{"usage":{"prompt_tokens":10,"prompt_tokens_details":null}}', []);
  t.equal(s.promptTokens, 10);
  t.equal(s.cachedTokens, undefined);
  t.equal(
    scanIn('{"usage":{"prompt_tokens" : 12 ,"prompt_tokens_details":{"cached_tokens":\n0}}}', []).cachedTokens,
    0,
    'whitespace around the colon',
  );
});

t.test('long generated text (the native skip path) split at every position', async (t) => {
  const text = JSON.stringify({
    choices: [{ message: { content: `${'word '.repeat(300)}"cached_tokens": 1 ${'more '.repeat(300)}` } }],
    usage: { prompt_tokens: 77, prompt_tokens_details: { cached_tokens: 64 } },
  });
  let bad = 0;
  for (let cut = 1; cut < text.length; cut += 3) {
    const s = scanIn(text, [cut, Math.min(text.length - 1, cut + 300)]);
    if (s.cachedTokens !== 64 || s.promptTokens !== 77) bad++;
  }
  t.equal(bad, 0);
});

// Shapes of vLLM's Responses usage (responses/protocol.py ResponseUsage) and of its Anthropic
// Messages usage (anthropic/protocol.py AnthropicUsage), JSON and streamed.
const responsesJson = JSON.stringify({
  id: 'resp_1',
  object: 'response',
  output: [{ type: 'message', content: [{ type: 'output_text', text: '"input_tokens": 9 "cached_tokens": 9' }] }],
  usage: {
    input_tokens: 2048,
    input_tokens_details: { cached_tokens: 1536, input_tokens_per_turn: [], cached_tokens_per_turn: [] },
    output_tokens: 10,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: 2058,
  },
});
const responsesSse = [
  `event: response.created\ndata: ${JSON.stringify({ type: 'response.created', response: { id: 'r', usage: null } })}\n\n`,
  `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'hi' })}\n\n`,
  `event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: { id: 'r', usage: { input_tokens: 300, input_tokens_details: { cached_tokens: 256 }, output_tokens: 4, total_tokens: 304 } } })}\n\n`,
].join('');
const messagesJson = JSON.stringify({
  id: 'msg_1',
  type: 'message',
  content: [{ type: 'text', text: 'x' }],
  usage: { input_tokens: 700, output_tokens: 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 512 },
});
const messagesSse = [
  `event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { id: 'm', content: [], usage: { input_tokens: 700, output_tokens: 0 } } })}\n\n`,
  `event: content_block_delta\ndata: ${JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'x' } })}\n\n`,
  `event: message_delta\ndata: ${JSON.stringify({ type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { input_tokens: 700, output_tokens: 3, cache_read_input_tokens: 512 } })}\n\n`,
  `event: message_stop\ndata: {"type":"message_stop"}\n\n`,
].join('');

t.test('Responses and Messages usage, JSON and streamed, split at every byte', async (t) => {
  const cases: [string, string, number, number][] = [
    ['responses JSON', responsesJson, 2048, 1536],
    ['responses stream (response.completed)', responsesSse, 300, 256],
    ['messages JSON', messagesJson, 700, 512],
    ['messages stream (message_start, message_delta)', messagesSse, 700, 512],
  ];
  for (const [name, text, prompt, cached] of cases) {
    t.same([scanIn(text, []).promptTokens, scanIn(text, []).cachedTokens], [prompt, cached], name);
    let bad = 0;
    for (let cut = 1; cut < Buffer.byteLength(text); cut++) {
      const s = scanIn(text, [cut]);
      if (s.promptTokens !== prompt || s.cachedTokens !== cached) bad++;
    }
    t.equal(bad, 0, `${name}: every split reads ${prompt} / ${cached}`);
  }
  const start = messagesSse.slice(0, messagesSse.indexOf('event: content_block_delta'));
  t.same(
    [scanIn(start, []).promptTokens, scanIn(start, []).cachedTokens],
    [700, undefined],
    'message_start alone: no cached count yet',
  );
});
