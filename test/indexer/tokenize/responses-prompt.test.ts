import t from 'tap';
import { anthropicToChat } from '../../../indexer/tokenize/anthropic-prompt.js';
import { previousOutputMessages, responsesToChat } from '../../../indexer/tokenize/responses-prompt.js';

// Expected outputs below are worked out by hand from vLLM's source, not from our code:
//   Responses: vllm/entrypoints/openai/responses/utils.py — construct_input_messages,
//     construct_chat_messages_with_tool_call, _construct_message_from_response_item,
//     should_continue_final_message, construct_tool_dicts / convert_tool_responses_to_completions_format.
//   Messages: vllm/entrypoints/anthropic/serving.py — AnthropicServingMessages._convert_system_message,
//     _convert_messages, _convert_message_content, _convert_block, _convert_tool_use_block,
//     _convert_tool_result_block, _convert_user_tool_result, _convert_tools; protocol.py
//     AnthropicMessage.normalize_role, AnthropicTool.validate_input_schema.

const UNCONVERTIBLE = { message: /./, param: /./ };

void t.test(
  'Responses: construct_input_messages order (instructions, stored conversation minus every system message, input)',
  (t) => {
    const previous = [
      { role: 'system', content: 'old instructions' },
      { role: 'user', content: 'hi' },
      { role: 'system', content: 'a system item of the old input' },
      { role: 'assistant', content: 'hello' },
    ];
    const chat = responsesToChat({ instructions: 'be brief', input: 'next' }, previous);
    t.same(chat.messages, [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
      { role: 'user', content: 'next' },
    ]);
    t.same(
      responsesToChat({ instructions: '', input: 'x' }).messages,
      [{ role: 'user', content: 'x' }],
      'empty instructions add nothing',
    );
    t.equal(responsesToChat({ input: 'x', tools: [] }).tools, undefined, 'no tools: construct_tool_dicts returns None');
    t.end();
  },
);

void t.test(
  'Responses: previous output is one assistant message per output_text part; reasoning and calls skipped',
  (t) => {
    const response = {
      output: [
        { type: 'reasoning', content: [{ type: 'reasoning_text', text: 'thinking' }] },
        {
          type: 'message',
          role: 'assistant',
          content: [
            { type: 'output_text', text: 'a' },
            { type: 'output_text', text: 'b' },
          ],
        },
        { type: 'function_call', call_id: 'c', name: 'f', arguments: '{}' },
      ],
    };
    t.same(previousOutputMessages(response), [
      { role: 'assistant', content: 'a' },
      { role: 'assistant', content: 'b' },
    ]);
    t.same(previousOutputMessages({ output: [{ type: 'function_call' }] }), [], 'a calls-only output appends nothing');
    t.end();
  },
);

void t.test('Responses: _construct_message_from_response_item for every item kind, with merging', (t) => {
  const user = {
    type: 'message',
    role: 'user',
    content: [
      { type: 'input_text', text: 'a' },
      { type: 'input_text', text: 'b' },
    ],
  };
  const chat = responsesToChat({
    input: [
      user,
      {
        type: 'reasoning',
        id: 'rs',
        summary: [{ type: 'summary_text', text: 'sum' }],
        content: [{ type: 'reasoning_text', text: 'why' }],
      },
      {
        type: 'message',
        role: 'assistant',
        content: [
          { type: 'output_text', text: 'first' },
          { type: 'output_text', text: 'second' },
        ],
      },
      { type: 'function_call', call_id: 'c1', name: 'f', arguments: '{"x":1}' },
      { type: 'function_call', call_id: 'c2', name: 'g', arguments: '{}' },
      { type: 'function_call_output', call_id: 'c1', output: '42' },
      { type: 'function_call', call_id: 'c3', name: 'h', arguments: '{}' },
      { role: 'assistant', content: 'plain' },
      { type: 'reasoning', id: 'rs2', summary: [{ type: 'summary_text', text: 'only summary' }] },
    ],
  });
  t.same(
    chat.messages,
    [
      // User messages pass through as given: the chat parser joins their text parts.
      user,
      // reasoning opens an assistant message; the output message fills its empty content (content[0] only).
      {
        role: 'assistant',
        reasoning: 'why',
        content: 'first',
        tool_calls: [
          { id: 'c1', function: { name: 'f', arguments: '{"x":1}' }, type: 'function' },
          { id: 'c2', function: { name: 'g', arguments: '{}' }, type: 'function' },
        ],
      },
      { role: 'tool', content: '42', tool_call_id: 'c1' },
      // A call after a non-assistant message starts a new assistant message; text then fills its content.
      {
        role: 'assistant',
        tool_calls: [{ id: 'c3', function: { name: 'h', arguments: '{}' }, type: 'function' }],
        content: 'plain',
      },
    ].map((m, i) => (i === 3 ? { ...m, reasoning: 'only summary' } : m)),
  );
  t.end();
});

void t.test('Responses: tools keep every field but type; unreproduced shapes throw', (t) => {
  const chat = responsesToChat({
    input: 'x',
    tools: [{ type: 'function', name: 'f', description: 'd', parameters: { type: 'object' }, strict: true }],
  });
  t.same(chat.tools, [
    { type: 'function', function: { name: 'f', description: 'd', parameters: { type: 'object' }, strict: true } },
  ]);
  t.throws(() => responsesToChat({ input: 'x', tools: [{ type: 'web_search_preview' }] }), UNCONVERTIBLE);
  t.throws(() => responsesToChat({ input: [{ type: 'item_reference', id: 'x' }] }), UNCONVERTIBLE);
  t.throws(() => responsesToChat({ input: [{ type: 'reasoning', encrypted_content: 'zz' }] }), UNCONVERTIBLE);
  t.throws(
    () => responsesToChat({ input: [{ type: 'message', role: 'assistant', status: 'in_progress', content: [] }] }),
    UNCONVERTIBLE,
    'should_continue_final_message: continuation is not reproduced',
  );
  t.end();
});

void t.test(
  'Messages: system from the field and from system-role messages, joined with nothing, billing header dropped',
  (t) => {
    const chat = anthropicToChat({
      system: [
        { type: 'text', text: 'x-anthropic-billing-header: cc=1;' },
        { type: 'text', text: 'You are ' },
        { type: 'text', text: '' },
        { type: 'text', text: 'helpful.' },
      ],
      messages: [
        { role: 'system', content: ' Be brief.' },
        { role: 'ctx', content: 'q' },
      ],
    });
    t.same(chat.messages, [
      { role: 'system', content: 'You are helpful. Be brief.' },
      { role: 'user', content: 'q' },
    ]);
    t.same(anthropicToChat({ system: '', messages: [{ role: 'user', content: 'q' }] }).messages, [
      { role: 'user', content: 'q' },
    ]);
    t.end();
  },
);

void t.test('Messages: content blocks, thinking, tool use and results as _convert_message_content builds them', (t) => {
  const chat = anthropicToChat({
    messages: [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'a' },
          { type: 'text', text: '' },
          { type: 'text', text: 'b' },
        ],
      },
      {
        role: 'assistant',
        content: [
          { type: 'thinking', thinking: 'hm', signature: 's' },
          { type: 'redacted_thinking', data: 'zz' },
          { type: 'text', text: 'calling' },
          { type: 'tool_use', id: 't1', name: 'f', input: { a: 1 } },
        ],
      },
      {
        role: 'user',
        content: [
          {
            type: 'tool_result',
            tool_use_id: 't1',
            content: [
              { type: 'text', text: 'x' },
              { type: 'text', text: 'y' },
            ],
          },
          { type: 'tool_result', tool_use_id: 't2', content: [{ type: 'tool_reference', tool_name: 'lookup' }] },
        ],
      },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 't3', content: 'done' },
          { type: 'text', text: 'go on' },
        ],
      },
      { role: 'assistant', content: [{ type: 'tool_result', tool_use_id: 't4', content: 'odd' }] },
      { role: 'assistant', content: [] },
    ],
    tools: [{ name: 'f', input_schema: { properties: {} } }],
    chat_template_kwargs: { enable_thinking: false },
  });
  t.same(chat.messages, [
    {
      role: 'user',
      content: [
        { type: 'text', text: 'a' },
        { type: 'text', text: 'b' },
      ],
    },
    {
      role: 'assistant',
      reasoning: 'hm',
      tool_calls: [{ id: 't1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }],
      content: 'calling',
    },
    { role: 'tool', tool_call_id: 't1', content: 'x\ny' },
    { role: 'tool', tool_call_id: 't2', content: '' },
    { role: 'tool', tool_call_id: 't2', content: [{ type: 'tool_reference', name: 'lookup' }] },
    { role: 'tool', tool_call_id: 't3', content: 'done' },
    { role: 'user', content: 'go on' },
    { role: 'assistant', content: 'Tool result: odd' },
    { role: 'assistant' },
  ]);
  t.same(chat.tools, [
    { type: 'function', function: { name: 'f', description: null, parameters: { properties: {}, type: 'object' } } },
  ]);
  t.same(chat.templateKwargs, { enable_thinking: false });
  t.end();
});

void t.test('Messages: shapes whose tokens are not reproduced throw', (t) => {
  t.throws(() => anthropicToChat({ messages: [] }), UNCONVERTIBLE);
  t.throws(
    () =>
      anthropicToChat({
        messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: 'u' } }] }],
      }),
    UNCONVERTIBLE,
  );
  t.throws(
    () => anthropicToChat({ messages: [{ role: 'assistant', content: [{ type: 'tool_use', name: 'f' }] }] }),
    UNCONVERTIBLE,
    'no id: vLLM uses the clock',
  );
  t.throws(
    () => anthropicToChat({ messages: [{ role: 'user', content: 'q' }], tools: [{ name: 'f' }] }),
    UNCONVERTIBLE,
  );
  t.end();
});
