import t from 'tap';
import {
  compileMatch,
  globToRegExp,
  matchConfigSchema,
  type MatchInput,
} from '../../../../gateway/routing/policies/match.js';

const input = (o: Partial<MatchInput> = {}): MatchInput => ({
  model: 'Qwen/Qwen3-0.6B',
  path: '/v1/chat/completions',
  headers: {},
  promptTokens: 100,
  ...o,
});
const compile = (raw: unknown) => compileMatch(matchConfigSchema.parse(raw));

t.test('an empty match matches everything', async (t) => {
  t.ok(compileMatch(undefined)(input()));
  t.ok(compile({})(input()));
});

t.test('headers: exact, prefix, regex; names are case-insensitive', async (t) => {
  const m = compile({ headers: { 'X-Tenant': 'acme' } });
  t.ok(m(input({ headers: { 'x-tenant': 'acme' } })));
  t.notOk(m(input({ headers: { 'x-tenant': 'acme2' } })), 'exact means exact');
  t.notOk(m(input()), 'absent header does not match');
  t.ok(compile({ headers: { 'x-tenant': { exact: 'acme' } } })(input({ headers: { 'x-tenant': 'acme' } })));
  const p = compile({ headers: { 'x-user': { prefix: 'beta-' } } });
  t.ok(p(input({ headers: { 'x-user': 'beta-42' } })));
  t.notOk(p(input({ headers: { 'x-user': 'alpha-42' } })));
  const r = compile({ headers: { 'x-user': { regex: '^(ops|sre)-\\d+$' } } });
  t.ok(r(input({ headers: { 'x-user': 'sre-7' } })));
  t.notOk(r(input({ headers: { 'x-user': 'dev-7' } })));
  t.notOk(r(input()));
  t.ok(
    compile({ headers: { a: '1', b: { prefix: 'x' } } })(input({ headers: { a: '1', b: 'xy' } })),
    'all headers must hold',
  );
  t.notOk(compile({ headers: { a: '1', b: { prefix: 'x' } } })(input({ headers: { a: '1', b: 'yy' } })));
});

t.test('model and path globs', async (t) => {
  t.ok(compile({ model: 'Qwen/*' })(input()));
  t.notOk(compile({ model: 'meta-llama/*' })(input()));
  t.ok(compile({ model: ['meta-llama/*', 'Qwen/Qwen3-?.6B'] })(input()), 'any glob of a list');
  t.ok(compile({ model: 'Qwen/Qwen3-0.6B' })(input()), 'a plain name is an exact match');
  t.notOk(compile({ model: 'Qwen/Qwen3' })(input()));
  t.notOk(compile({ model: 'Qwen.Qwen3-0.6B' })(input()), 'dots are literal');
  t.ok(compile({ model: 'sql-lora' })(input({ model: 'sql-lora' })), 'a LoRA adapter name is a model name');
  t.ok(compile({ path: '/v1/chat/*' })(input()));
  t.notOk(compile({ path: '/v1/completions' })(input()));
  t.equal(globToRegExp('a*b?c').source, '^a.*b.c$');
  t.ok(globToRegExp('x(1)+[y]').test('x(1)+[y]'), 'regex characters are escaped');
});

t.test('prompt-length ranges are inclusive at both ends', async (t) => {
  const long = compile({ promptTokens: { min: 8000 } });
  t.notOk(long(input({ promptTokens: 7999 })));
  t.ok(long(input({ promptTokens: 8000 })));
  t.ok(long(input({ promptTokens: 1_000_000 })));
  const mid = compile({ promptTokens: { min: 100, max: 200 } });
  t.ok(mid(input({ promptTokens: 100 })));
  t.ok(mid(input({ promptTokens: 200 })));
  t.notOk(mid(input({ promptTokens: 201 })));
  t.notOk(mid(input({ promptTokens: 99 })));
  const both = compile({ model: 'Qwen/*', promptTokens: { max: 50 } });
  t.notOk(both(input()), 'every condition must hold');
  t.ok(both(input({ promptTokens: 50 })));
});

t.test('bad rules are schema errors', async (t) => {
  const bad = matchConfigSchema.safeParse({ headers: { x: { regex: '(' } } });
  t.notOk(bad.success);
  t.match(bad.error?.issues[0]?.message, /invalid regular expression/);
  t.same(bad.error?.issues[0]?.path, ['headers', 'x', 'regex']);
  t.notOk(matchConfigSchema.safeParse({ promptTokens: { min: 10, max: 5 } }).success, 'min > max');
  t.notOk(matchConfigSchema.safeParse({ header: {} }).success, 'unknown key');
  t.notOk(matchConfigSchema.safeParse({ headers: { x: { suffix: 'a' } } }).success, 'unknown header condition');
});
