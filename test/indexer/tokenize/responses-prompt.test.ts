import t from 'tap';
import { anthropicToChat, responsesToChat } from '../../../indexer/tokenize/responses-prompt.js';

void t.test('Responses: instructions, stored conversation, input items and tools as vLLM renders them', (t) => {
  const previous = [
    { role: 'system', content: 'old instructions' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'hello' },
  ];
  const chat = responsesToChat(
    {
      instructions: 'be brief',
      input: [
        {
          type: 'message',
          role: 'user',
          content: [
            { type: 'input_text', text: 'a' },
            { type: 'input_text', text: 'b' },
          ],
        },
        { type: 'function_call_output', call_id: 'c1', output: '42' },
      ],
      tools: [{ type: 'function', name: 'f', description: 'd', parameters: { type: 'object' } }],
    },
    previous,
  );
  t.same(chat.messages, [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'hello' },
    { role: 'user', content: 'a\nb' },
    { role: 'tool', content: '42', tool_call_id: 'c1' },
  ]);
  t.same(chat.tools, [{ type: 'function', function: { name: 'f', description: 'd', parameters: { type: 'object' } } }]);
  t.same(responsesToChat({ input: 'x' }).messages, [{ role: 'user', content: 'x' }], 'a string input is one user turn');
  t.throws(
    () => responsesToChat({ input: [{ type: 'input_image', image_url: 'u' }] }),
    { message: /./, param: /./ },
    'throws UnconvertiblePromptError naming the field',
  );
  t.end();
});

void t.test('Messages: system blocks, tool use and results, tools as vLLM converts them', (t) => {
  const chat = anthropicToChat({
    system: [{ type: 'text', text: 'sys' }],
    messages: [
      { role: 'user', content: 'q' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'f', input: { a: 1 } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', content: 'done' }] },
    ],
    tools: [{ name: 'f', description: 'd', input_schema: { type: 'object' } }],
  });
  t.same(chat.messages, [
    { role: 'system', content: 'sys' },
    { role: 'user', content: 'q' },
    {
      role: 'assistant',
      content: '',
      tool_calls: [{ id: 't1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }],
    },
    { role: 'tool', tool_call_id: 't1', content: 'done' },
  ]);
  t.same(chat.tools, [{ type: 'function', function: { name: 'f', parameters: { type: 'object' }, description: 'd' } }]);
  t.throws(
    () => anthropicToChat({ messages: [] }),
    { message: /./, param: /./ },
    'throws UnconvertiblePromptError naming the field',
  );
  t.throws(() => anthropicToChat({ messages: [{ role: 'user', content: [{ type: 'image' }] }] }));
  t.end();
});
