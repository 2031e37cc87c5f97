import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';

/**
 * A header condition: a plain string is an exact match; `{prefix}` and `{regex}`
 * cover the rest. Regexes are compiled at start-up, so a bad one is a config error.
 */
const headerConditionSchema = z.union([
  z.string(),
  z.strictObject({ exact: z.string() }),
  z.strictObject({ prefix: z.string() }),
  z.strictObject({ regex: z.string().superRefine(checkRegex) }),
]);

const globsSchema = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

/**
 * Prompt length range, inclusive at both ends. By default it is checked against
 * the estimate (characters / 4, exact for token-id prompts), which costs nothing;
 * `exact: true` makes the gateway tokenize every request before the policies run.
 */
const promptTokensSchema = z
  .strictObject({
    min: z.number().int().min(0).optional(),
    max: z.number().int().min(0).optional(),
    exact: z.boolean().default(false),
  })
  .refine((r) => r.min === undefined || r.max === undefined || r.min <= r.max, { message: 'min must not exceed max' });

/** Conditions of a policy or experiment; all given conditions must hold. An empty match matches everything. */
export const matchConfigSchema = z.strictObject({
  /** Header name (case-insensitive) -> condition. */
  headers: z
    .record(z.string().min(1), headerConditionSchema)
    .optional()
    .transform((h) =>
      h === undefined ? undefined : Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v])),
    ),
  /** Model name glob(s): `*` any run of characters, `?` one character. LoRA adapter names are models too. */
  model: globsSchema.optional(),
  /** Request path glob(s), without the query string, e.g. `/v1/chat/completions`. */
  path: globsSchema.optional(),
  promptTokens: promptTokensSchema.optional(),
});
export type MatchConfig = z.infer<typeof matchConfigSchema>;

/** What a match looks at; built once per request by the pipeline. */
export interface MatchInput {
  readonly model: string;
  /** Path without the query string. */
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly promptTokens: number;
}

export type Matcher = (input: MatchInput) => boolean;

function checkRegex(source: string, ctx: z.RefinementCtx): void {
  try {
    new RegExp(source);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `invalid regular expression: ${(err as Error).message}` });
  }
}

/** Anchored RegExp for a glob where only `*` and `?` are special. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (const ch of glob) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\/-]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

function globsMatcher(globs: string | string[]): (s: string) => boolean {
  const list = Array.isArray(globs) ? globs : [globs];
  // Plain names (the common case) compare as strings, no RegExp.
  if (list.every((g) => !g.includes('*') && !g.includes('?'))) {
    const set = new Set(list);
    return (s) => set.has(s);
  }
  const res = list.map(globToRegExp);
  return (s) => res.some((r) => r.test(s));
}

function headerMatcher(name: string, cond: z.infer<typeof headerConditionSchema>): Matcher {
  const value = (input: MatchInput): string | undefined => {
    const v = input.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  if (typeof cond === 'string' || 'exact' in cond) {
    const want = typeof cond === 'string' ? cond : cond.exact;
    return (i) => value(i) === want;
  }
  if ('prefix' in cond) return (i) => value(i)?.startsWith(cond.prefix) === true;
  const re = new RegExp(cond.regex);
  return (i) => {
    const v = value(i);
    return v !== undefined && re.test(v);
  };
}

/** Compiles a match into one predicate; conditions are checked cheapest first. */
export function compileMatch(config: MatchConfig | undefined): Matcher {
  if (!config) return () => true;
  const checks: Matcher[] = [];
  const { promptTokens: range } = config;
  if (range) {
    const min = range.min ?? 0;
    const max = range.max ?? Number.POSITIVE_INFINITY;
    checks.push((i) => i.promptTokens >= min && i.promptTokens <= max);
  }
  if (config.model !== undefined) {
    const m = globsMatcher(config.model);
    checks.push((i) => m(i.model));
  }
  if (config.path !== undefined) {
    const m = globsMatcher(config.path);
    checks.push((i) => m(i.path));
  }
  for (const [name, cond] of Object.entries(config.headers ?? {})) checks.push(headerMatcher(name, cond));
  if (checks.length === 0) return () => true;
  if (checks.length === 1) return checks[0]!;
  return (i) => {
    for (const c of checks) if (!c(i)) return false;
    return true;
  };
}

/** True when the match compares prompt length against exact token counts. */
export function needsExactTokens(config: MatchConfig | undefined): boolean {
  return config?.promptTokens?.exact === true;
}
