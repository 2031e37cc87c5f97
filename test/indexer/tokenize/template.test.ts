import t from 'tap';
import {
  ChatTemplate,
  toConversation,
  toToolDicts,
  UnsupportedPromptError,
} from '../../../indexer/tokenize/chat-template.js';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

// Expected strings written out by hand from Qwen3's template (tokenizer_config.json
// chat_template) and transformers/vLLM semantics; this is where gateways go wrong.
const TOOLS_HEADER =
  '<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
  'You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n';
const TOOLS_FOOTER =
  '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' +
  '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n';

t.test('Qwen3 rendering pins', async (t) => {
  const tok = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);

  t.equal(
    tok.renderChat([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ]),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    'system + user + generation prompt',
  );
  t.equal(
    tok.renderChat([{ role: 'user', content: 'Hi' }], { templateKwargs: { enable_thinking: false } }),
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n',
    'chat_template_kwargs.enable_thinking=false writes an empty think block',
  );
  t.equal(
    tok.renderChat([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false }),
    '<|im_start|>user\nHi<|im_end|>\n',
    'no generation prompt',
  );
  t.equal(
    tok.renderChat([
      { role: 'user', content: 'q1' },
      { role: 'assistant', content: '<think>\nold reasoning\n</think>\n\na1' },
      { role: 'user', content: 'q2' },
      { role: 'assistant', content: 'a2', reasoning_content: 'new reasoning' },
      { role: 'user', content: '<tool_response>\nr\n</tool_response>' },
    ]),
    '<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n' +
      '<|im_start|>assistant\n<think>\nnew reasoning\n</think>\n\na2<|im_end|>\n' +
      '<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
    'think blocks: dropped before the last real user query, kept after it (a tool-response user turn is not a query)',
  );
  t.equal(
    tok.renderChat(
      [
        { role: 'user', content: 'Write a haiku' },
        { role: 'assistant', content: 'Silent cache hits  ' },
      ],
      {
        addGenerationPrompt: false,
        continueFinalMessage: true,
      },
    ),
    '<|im_start|>user\nWrite a haiku<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nSilent cache hits  ',
    'continue_final_message cuts after the final content (its trailing spaces kept, as transformers does)',
  );
  t.equal(
    tok.renderChat(
      [
        { role: 'user', content: 'w?' },
        {
          role: 'assistant',
          content: 'Checking.',
          tool_calls: [
            { id: 'a', type: 'function', function: { name: 'f', arguments: '{"x": 1}' } },
            { id: 'b', type: 'function', function: { name: 'g', arguments: 'bad' } },
          ],
        },
        { role: 'tool', tool_call_id: 'a', content: 'one' },
        {
          role: 'tool',
          tool_call_id: 'b',
          content: [
            { type: 'text', text: 'tw' },
            { type: 'text', text: 'o' },
          ],
        },
      ],
      { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' }, strict: true } }] },
    ),
    TOOLS_HEADER +
      '{"type": "function", "function": {"name": "f", "description": null, "parameters": {"type": "object"}, "strict": true}}' +
      TOOLS_FOOTER +
      '<|im_start|>user\nw?<|im_end|>\n<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call><|im_end|>\n' +
      '<|im_start|>user\n<tool_response>\none\n</tool_response>\n<tool_response>\ntw\no\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
    'tools dumped with null description, JSON-string arguments parsed (bad JSON -> {}), tool results grouped in one user turn',
  );
  t.equal(
    tok.renderChat([
      {
        role: 'user',
        content: [{ type: 'text', text: 'a' }, { type: 'text', text: '' }, 'b', { type: 'text', text: 'c' }],
      },
    ]),
    '<|im_start|>user\na\nb\nc<|im_end|>\n<|im_start|>assistant\n',
    'text parts joined with "\\n", empty parts dropped',
  );
  t.equal(
    tok.renderChat([
      { role: 'user', content: 'q' },
      { role: 'assistant', content: '<think>\n  spaced reasoning \t\n</think>\n\n  answer with spaces' },
      { role: 'assistant', content: 'b', reasoning_content: '\n\n  r  \n' },
      { role: 'user', content: '<tool_response>x</tool_response>' },
    ]),
    '<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n  spaced reasoning \t\n</think>\n\n  answer with spaces<|im_end|>\n' +
      '<|im_start|>assistant\n<think>\n  r  \n</think>\n\nb<|im_end|>\n' +
      '<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n<|im_start|>assistant\n',
    "lstrip('\\n') / strip('\\n') remove newlines only, as in Python (the JS jinja library would trim all whitespace)",
  );
  t.equal(
    tok.renderChat([{ role: 'user', content: null }]),
    '<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n',
    'null content renders as empty text',
  );
});

t.test('message normalisation follows vLLM', async (t) => {
  const [assistant] = toConversation([
    {
      role: 'assistant',
      content: null,
      tool_calls: [
        { id: 'x', type: 'function', function: { name: 'f', arguments: '[1, 2]' } },
        { function: { name: 'g', arguments: 7 } },
      ],
      extra: 'dropped',
      reasoning: 'r',
    },
  ]);
  t.same(assistant, {
    role: 'assistant',
    content: '',
    tool_calls: [
      { id: 'x', type: 'function', function: { name: 'f', arguments: [1, 2] } },
      { function: { name: 'g', arguments: {} } },
    ],
    reasoning: 'r',
    reasoning_content: 'r',
  });
  t.same(
    toConversation([{ role: 'assistant', content: 'x', tool_calls: [] }]),
    [{ role: 'assistant', content: 'x' }],
    'empty tool_calls dropped',
  );
  t.same(toConversation([{ role: 'tool', content: 'y', tool_call_id: 'c', name: 'n' }]), [
    { role: 'tool', content: 'y', tool_call_id: 'c', name: 'n' },
  ]);
  t.same(toToolDicts([{ function: { name: 'f', extra: 1 } }]), [
    { type: 'function', function: { name: 'f', description: null, parameters: null, extra: 1 } },
  ]);
  t.throws(
    () => toConversation([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }]),
    UnsupportedPromptError,
    'media parts',
  );
  t.throws(
    () => toConversation([{ role: 'user', content: [{ type: 'weird' }] }]),
    UnsupportedPromptError,
    'unknown part type',
  );
  t.throws(() => toConversation([{ content: 'no role' }]), UnsupportedPromptError);
  t.throws(() => toToolDicts([{ type: 'retrieval' }]), UnsupportedPromptError);
});

t.test('special tokens in scope, absent ones undefined (render as "")', async (t) => {
  const tpl = new ChatTemplate(
    '[{{ bos_token }}]{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{% if tools is none %}N{% endif %}',
    { eos_token: '</s>' },
  );
  t.equal(tpl.render([{ role: 'user', content: 'x' }]), '[]x</s>N');
  t.throws(
    () => tpl.render([{ role: 'user', content: 'x' }], { addGenerationPrompt: true, continueFinalMessage: true }),
    UnsupportedPromptError,
  );
});
