import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { ChatTemplate, toConversation, type ChatRenderOptions } from '../../../indexer/tokenize/chat-template.js';
import { IncrementalRenderer } from '../../../indexer/tokenize/incremental-render.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { chatCases, longText } from '../../fixtures/tokenizer/corpus.js';

const config = JSON.parse(readFileSync(join(QWEN3_TOKENIZER_DIR, 'tokenizer_config.json'), 'utf8')) as {
  chat_template: string;
};
const SPECIALS = { eos_token: '<|im_end|>', pad_token: '<|endoftext|>' };

function optionsOf(b: Record<string, unknown>): ChatRenderOptions {
  return {
    tools: b.tools as unknown[] | undefined,
    templateKwargs: b.chat_template_kwargs as Record<string, unknown> | undefined,
    addGenerationPrompt: (b.add_generation_prompt as boolean | undefined) ?? true,
    continueFinalMessage: b.continue_final_message === true,
  };
}

/** The render's text, or its error message: both paths must agree on failures too. */
function outcome(f: () => string): string {
  try {
    return f();
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

t.test(
  'Qwen3: every corpus case, and every prefix of it as a growing conversation, equals the whole render',
  async (t) => {
    const template = new ChatTemplate(config.chat_template, SPECIALS);
    t.ok(template.incremental, 'the Qwen3 template is rendered pass by pass');
    for (const pass of ['cold', 'warm']) {
      for (const c of chatCases) {
        const messages = c.body.messages as unknown[];
        const options = optionsOf(c.body);
        for (let k = 1; k <= messages.length; k++) {
          const prefix = messages.slice(0, k);
          t.equal(
            outcome(() => template.render(prefix, options)),
            outcome(() => template.renderWhole(prefix, options)),
            `${pass}: ${c.name}, first ${k} of ${messages.length}`,
          );
        }
      }
    }
  },
);

t.test('a turn that extends a conversation renders only its new messages', async (t) => {
  const renderer = IncrementalRenderer.for(new Template(config.chat_template).parsed)!;
  const whole = new Template(config.chat_template);
  const messages = toConversation(
    Array.from({ length: 21 }, (_, i) => ({
      role: i % 2 ? 'assistant' : 'user',
      content: longText(2000, i + 1),
    })),
  );
  const items = (n: number) => ({ ...SPECIALS, add_generation_prompt: true, messages: messages.slice(0, n) });
  t.equal(renderer.render(items(19)), whole.render(items(19)));
  const before = renderer.stats();
  t.equal(renderer.render(items(21)), whole.render(items(21)));
  const after = renderer.stats();
  // Messages 19 and 20 are new; 18 was the last one before (loop.last is part of its key).
  t.equal(after.misses - before.misses, 3, 'three passes rendered');
  t.equal(after.hits - before.hits, 18, 'the other 18 from the cache, though the last query index moved');
});

const SMALL_CONVERSATIONS: unknown[][] = [
  [{ role: 'user', content: 'a' }],
  [
    { role: 'system', content: 's' },
    { role: 'user', content: 'a' },
    { role: 'assistant', content: 'b' },
    { role: 'user', content: 'c' },
  ],
  [
    { role: 'user', content: 'x' },
    { role: 'tool', content: 'r1' },
    { role: 'tool', content: 'r2' },
    { role: 'assistant', content: 'y' },
  ],
];

t.test('other template shapes: refused when a pass is not self-contained, exact either way', async (t) => {
  const cases: { name: string; source: string; incremental: boolean }[] = [
    {
      name: 'length, revindex, neighbours and a fixed index',
      source:
        '{% for m in messages %}[{{ loop.index }}/{{ loop.length }} r{{ loop.revindex0 }} {{ m.role }}:{{ m.content }}' +
        '{% if not loop.first %} prev={{ messages[loop.index0 - 1].content }}{% endif %}' +
        '{% if not loop.last %} next={{ messages[loop.index0 + 1].role }}{% endif %} first={{ messages[0].content }}]' +
        '{% endfor %}{% if add_generation_prompt %}GEN{% endif %}',
      incremental: true,
    },
    {
      name: 'a namespace the head computes',
      source:
        '{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == "user" %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}' +
        '{% for m in messages %}{{ m.role }}({{ ns.n }}){{ m.content }}|{% endfor %}',
      incremental: true,
    },
    {
      name: 'a variable carried from one pass to the next',
      source:
        '{% for m in messages %}{% if m.role == "user" %}{% set last = m.content %}{% endif %}{{ last }};{% endfor %}',
      incremental: false,
    },
    {
      name: 'a namespace written in the loop',
      source:
        '{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ m.content }}{% endfor %}',
      incremental: false,
    },
    {
      name: 'messages read as a whole in the loop',
      source: '{% for m in messages %}{{ messages | tojson }}{% endfor %}',
      incremental: false,
    },
    {
      name: 'loop.previtem',
      source: '{% for m in messages %}{{ loop.previtem }}{% endfor %}',
      incremental: false,
    },
    {
      name: 'set then read inside a pass',
      source:
        '{% for m in messages %}{% set c = m.content %}{% if c %}{% set c = c + "!" %}{% endif %}{{ c }}' +
        '{% for x in [1, 2] %}{% set c = "inner" %}{{ c }}{{ loop.index }}{% endfor %}{{ c }}{% endfor %}',
      incremental: true,
    },
  ];
  for (const c of cases) {
    const renderer = IncrementalRenderer.for(new Template(c.source).parsed);
    t.equal(renderer !== undefined, c.incremental, `${c.name}: ${c.incremental ? 'incremental' : 'refused'}`);
    if (!renderer) continue;
    const whole = new Template(c.source);
    for (const conversation of SMALL_CONVERSATIONS)
      for (let k = 1; k <= conversation.length; k++)
        for (const gen of [true, false]) {
          const items = { add_generation_prompt: gen, messages: conversation.slice(0, k) };
          t.equal(renderer.render(items), whole.render(items), `${c.name}: ${k} messages, gen ${gen}`);
        }
  }
});

t.test('request variables named like the globals take the whole render', async (t) => {
  const renderer = IncrementalRenderer.for(new Template('{% for m in messages %}{{ m.content }}{% endfor %}').parsed)!;
  t.equal(renderer.render({ messages: [{ role: 'user', content: 'a' }], range: 1 }), undefined);
});
