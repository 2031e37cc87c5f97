import t from 'tap';
import { readStreamEnd, requestBody } from '../../../bench/replay/client.js';
import {
  blockTokens,
  parseTrace,
  PROMPT_VOCAB,
  promptTokens,
  TRACE_BLOCK_TOKENS,
  upperBound,
  type TraceRequest,
} from '../../../bench/replay/trace.js';

/**
 * A tiny conversation trace: request 1 is a first turn, request 2 its next
 * turn (shares blocks 0, 1, 2), request 3 another conversation that shares
 * only the system prompt (block 0), request 4 a repeat of request 1's first
 * two blocks, cut short.
 */
const TRACE = [
  { timestamp: 0, input_length: 1300, output_length: 10, hash_ids: [0, 1, 2] },
  { timestamp: 100, input_length: 2000, output_length: 20, hash_ids: [0, 1, 2, 3] },
  { timestamp: 100, input_length: 700, output_length: 5, hash_ids: [0, 4] },
  { timestamp: 250, input_length: 600, output_length: 1, hash_ids: [0, 1] },
]
  .map((r) => JSON.stringify(r))
  .join('\n');

const trace = () => parseTrace(`${TRACE}\n`);

t.test('parses the Mooncake format and rejects malformed lines with their number', async (t) => {
  const tr = trace();
  t.equal(tr.length, 4);
  t.same(tr[1], { timestamp: 100, inputLength: 2000, outputLength: 20, hashIds: [0, 1, 2, 3] });
  t.equal(parseTrace(TRACE, 2).length, 2, 'limit takes a prefix');
  t.throws(() => parseTrace('{"timestamp": 0}'), /line 1: expected/);
  t.throws(() => parseTrace(`${TRACE}\nnot json`), /line 5: not JSON/);
  t.throws(
    () => parseTrace('{"timestamp":0,"input_length":600,"output_length":1,"hash_ids":[0]}'),
    /1 hash_ids for 600 input tokens/,
  );
});

t.test('prompts are deterministic: same hash id, same tokens; different ids, different tokens', async (t) => {
  const a = blockTokens(7);
  t.equal(a.length, TRACE_BLOCK_TOKENS);
  t.same(blockTokens(7), a, 'same id, same tokens');
  t.ok(
    a.every((id) => Number.isInteger(id) && id >= 0 && id < PROMPT_VOCAB),
    'ids within the vocabulary, below the special tokens',
  );
  t.ok(new Set(a).size > 400, 'a block is not one repeated token');
  for (const other of [0, 6, 8, 1 << 20]) {
    const b = blockTokens(other);
    t.notSame(b, a, `id ${other} differs from id 7`);
    t.ok(b.filter((x, i) => x === a[i]).length < 5, `ids ${other} and 7 share (almost) no positions`);
  }
  t.same(blockTokens(7, [], 100), a.slice(0, 100), 'a cut block is a prefix of the full one');
});

t.test(
  'requests sharing leading hash ids share exactly those token blocks; the last block is cut to input_length',
  async (t) => {
    const [r1, r2, r3, r4] = trace() as [TraceRequest, TraceRequest, TraceRequest, TraceRequest];
    const p1 = promptTokens(r1);
    const p2 = promptTokens(r2);
    const p3 = promptTokens(r3);
    t.equal(p1.length, 1300);
    t.equal(p2.length, 2000);
    t.equal(p3.length, 700);
    t.same(p1.slice(1024), blockTokens(2).slice(0, 1300 - 1024), 'last block cut to input_length');
    t.same(p2.slice(0, 1300), p1, 'turn 2 starts with all of turn 1 (blocks 0, 1 and the part of 2 turn 1 had)');
    t.same(p2.slice(0, 1536), [...blockTokens(0), ...blockTokens(1), ...blockTokens(2)]);
    t.same(p3.slice(0, 512), p1.slice(0, 512), 'another conversation shares block 0');
    t.not(p3[512], p1[512], '...and not block 1');
    t.same(promptTokens(r4), p1.slice(0, 600));
    const body = JSON.parse(requestBody(r2, 'm')) as Record<string, unknown>;
    t.same(
      body,
      { model: 'm', prompt: p2, max_tokens: 20, stream: true, stream_options: { include_usage: true } },
      'the body sends exactly those token ids',
    );
  },
);

t.test('upper bound: an infinite shared cache, computed by hand', async (t) => {
  const b = upperBound(trace());
  // Block references: 3 + 4 + 2 + 2 = 11; seen before: r2 {0,1,2}, r3 {0}, r4 {0,1} = 6.
  t.equal(b.blocks, 11);
  t.equal(b.hitBlocks, 6);
  t.equal(b.distinctBlocks, 5);
  t.equal(b.blockRate, 6 / 11);
  // Tokens: 1300 + 2000 + 700 + 600 = 4600. Naive hits: r2 512+512+512, r3 512, r4 512+88.
  t.equal(b.tokens, 4600);
  t.equal(b.naiveHitTokens, 1536 + 512 + 600);
  // Exact: r2 can reuse only the 276 tokens of block 2 that r1 had (1300 - 1024), so 1300;
  // r3 512; r4 600 would be all of it, but the last token is always computed: 599.
  t.equal(b.hitTokens, 1300 + 512 + 599);
  t.equal(b.tokenRate, (1300 + 512 + 599) / 4600);
  // With 16-token engine blocks only whole blocks count: 1296 + 512 + 592.
  t.equal(upperBound(trace(), 16).hitTokens, 1296 + 512 + 592);
  t.equal(upperBound([]).blockRate, 0);
});

t.test('the end of a stream yields its usage, [DONE] and errors', async (t) => {
  const usage =
    '{"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":4}}}';
  const ok = readStreamEnd(`data: {"choices":[{"text":"a"}]}\n\ndata: ${usage}\n\ndata: [DONE]\n\n`);
  t.equal(ok.done, true);
  t.same(ok.usage, {
    prompt_tokens: 10,
    completion_tokens: 3,
    total_tokens: 13,
    prompt_tokens_details: { cached_tokens: 4 },
  });
  t.equal(readStreamEnd('data: {"choices":[{"text":"a"}]}\n\n').done, false, 'cut stream');
  t.match(readStreamEnd('data: {"error":{"message":"boom"}}\n\ndata: [DONE]\n\n').error, /boom/);
});
