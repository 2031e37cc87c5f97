import t from 'tap';
import { GatewayError } from '../../../../gateway/front/errors.js';
import { localTokenizers, parseTokenize, type TokenizeConfig } from '../../../../gateway/front/routes/tokenize.js';
import { PromptTokenizer } from '../../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../../fixtures/processes.js';

const MODEL = 'Qwen/Qwen3-0.6B';
const GATEWAY: TokenizeConfig = { answeredBy: 'gateway' };
const body = (b: unknown) => Buffer.from(JSON.stringify(b));
const noFleet = () => new Set<string>();

void t.test('tokenize and detokenize in vLLM shapes and defaults (serving_tokenization.py)', async (t) => {
  const tokenizer = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const local = localTokenizers(new Map([[MODEL, tokenizer]]), { [MODEL]: { maxModelLen: 40960 } });
  const answer = async (route: 'tokenize' | 'detokenize', b: unknown) => {
    const r = parseTokenize(body(b), route, local, GATEWAY, noFleet);
    t.ok(r.answer, 'the gateway can answer');
    return r.answer!();
  };

  const hello = await tokenizer.encode('Hello world', true);
  t.same(await answer('tokenize', { model: MODEL, prompt: 'Hello world' }), {
    count: hello.length,
    max_model_len: 40960,
    tokens: hello,
    token_strs: null,
  });
  const strs = (await answer('tokenize', { prompt: 'Hello world', return_token_strs: true }))!;
  t.same(strs.token_strs, ['Hello', 'Ġworld'], 'token_strs are vocabulary strings; no model means the only one');

  const messages = [{ role: 'user', content: 'Hi there' }];
  const chat = (await answer('tokenize', { model: MODEL, messages }))!;
  t.same(chat.tokens, await tokenizer.tokenizeChat(messages, { addGenerationPrompt: true }), 'generation prompt on');
  const bare = (await answer('tokenize', { model: MODEL, messages, add_generation_prompt: false }))!;
  t.equal(bare.count, (chat.count as number) - 3, 'without the generation prompt: no "<|im_start|>assistant\\n"');

  const back = await answer('detokenize', { model: MODEL, tokens: chat.tokens });
  t.same(back, { prompt: tokenizer.renderChat(messages) }, 'detokenize round-trips, special tokens kept');

  t.equal(
    await answer('tokenize', {
      model: MODEL,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }],
    }),
    undefined,
    'media: the gateway declines and a worker answers',
  );
  const template = parseTokenize(
    body({ model: MODEL, messages, chat_template: '{{ 1 }}' }),
    'tokenize',
    local,
    GATEWAY,
    noFleet,
  );
  t.equal(await template.answer!(), undefined, 'a request chat template is the engine’s to judge');

  await t.rejects(answer('detokenize', { model: MODEL, tokens: [tokenizer.vocabSize] }), {
    name: 'GatewayError',
    status: 400,
    param: 'tokens',
  });
  t.equal(tokenizer.vocabSize, 151669, "Qwen3's vocabulary with its added tokens");
});

void t.test('who answers: worker when configured so, or without a local tokenizer or maxModelLen', async (t) => {
  const tokenizer = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const local = localTokenizers(new Map([[MODEL, tokenizer]]), { [MODEL]: { maxModelLen: 40960 }, other: {} });
  const req = { model: MODEL, prompt: 'x' };
  t.equal(parseTokenize(body(req), 'tokenize', local, { answeredBy: 'worker' }, noFleet).answer, undefined);
  t.equal(parseTokenize(body({ ...req, model: 'other' }), 'tokenize', local, GATEWAY, noFleet).answer, undefined);
  const unknownLen = localTokenizers(new Map([[MODEL, tokenizer]]), { [MODEL]: {} });
  t.equal(parseTokenize(body(req), 'tokenize', unknownLen, GATEWAY, noFleet).answer, undefined, 'no maxModelLen');
  const routed = parseTokenize(body({ prompt: 'x' }), 'tokenize', undefined, GATEWAY, () => new Set([MODEL]));
  t.equal(routed.request.model, MODEL, 'no model: the fleet’s only one');
  t.same(JSON.parse(routed.request.raw.toString()), { prompt: 'x', model: MODEL }, 'and the worker is told which');
});

void t.test('bad input is a 400 with the field named, whoever would answer', async (t) => {
  const local = localTokenizers(new Map(), {});
  const fails = (route: 'tokenize' | 'detokenize', b: unknown, param: string) => {
    try {
      parseTokenize(body(b), route, local, GATEWAY, () => new Set([MODEL]));
      t.fail(`accepted ${JSON.stringify(b)}`);
    } catch (err) {
      t.ok(
        err instanceof GatewayError && err.status === 400 && err.param === param,
        `${JSON.stringify(b)} -> 400 ${param}`,
      );
    }
  };
  fails('tokenize', { model: MODEL }, 'prompt');
  fails('tokenize', { model: 7, prompt: 'x' }, 'model');
  fails('tokenize', { prompt: 'x', add_special_tokens: 'yes' }, 'add_special_tokens');
  fails('tokenize', { messages: 'hi' }, 'messages');
  fails('tokenize', { messages: [], continue_final_message: true }, 'continue_final_message');
  fails('detokenize', { tokens: 'abc' }, 'tokens');
  fails('detokenize', { tokens: [1, -2] }, 'tokens');
  try {
    parseTokenize(body({ prompt: 'x' }), 'tokenize', local, GATEWAY, () => new Set(['a', 'b']));
    t.fail('accepted a body without model in front of two models');
  } catch (err) {
    t.match(err, { status: 400, param: 'model' });
  }
});
