import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { parseStrategyParams, StrategyConfigError } from '../gateway/routing/strategies/registry.js';
import { ConfigError } from './errors.js';
import { gatewayConfigSchema, type GatewayConfig } from './schema.js';

export { ConfigError };

/**
 * Environment variables that override config keys, for the knobs operators
 * set per deployment. Applied before validation, so they are checked the same way.
 */
export const ENV_OVERRIDES: { env: string; path: string[]; kind: 'int' | 'string' }[] = [
  { env: 'KVGATE_HOST', path: ['server', 'host'], kind: 'string' },
  { env: 'KVGATE_PORT', path: ['server', 'port'], kind: 'int' },
  { env: 'KVGATE_ADMIN_HOST', path: ['admin', 'host'], kind: 'string' },
  { env: 'KVGATE_ADMIN_PORT', path: ['admin', 'port'], kind: 'int' },
  { env: 'KVGATE_ADMIN_TOKEN', path: ['admin', 'token'], kind: 'string' },
  { env: 'KVGATE_STRATEGY', path: ['routing', 'strategy'], kind: 'string' },
];

/** Reads, overrides from the environment and validates a YAML (or JSON) config file. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `kvgate: cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const where = e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : '';
    throw new ConfigError(`kvgate: ${file}${where}: invalid YAML: ${e.message.split('\n')[0]}`);
  }
  return parseConfig(doc.toJS() ?? {}, file, env);
}

/** Validates an already-parsed config object; `source` names it in errors. */
export function parseConfig(raw: unknown, source: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new ConfigError(`kvgate: ${source}: the config must be a mapping of sections (server, fleet, routing, ...)`);
  const withEnv = applyEnv(structuredClone(raw) as Record<string, unknown>, env);
  const parsed = gatewayConfigSchema.safeParse(withEnv);
  if (!parsed.success) {
    const issue = firstIssue(parsed.error.issues);
    const missing = parsed.error.issues[0]!.path.at(-1);
    throw new ConfigError(
      `kvgate: ${source}: ${describeIssue(issue)}${issue !== parsed.error.issues[0] && typeof missing === 'string' ? ` (did you mean '${missing}'?)` : ''}`,
    );
  }
  const config = parsed.data;
  try {
    config.routing.params = parseStrategyParams(config.routing.strategy, config.routing.params) as Record<
      string,
      unknown
    >;
  } catch (err) {
    if (err instanceof StrategyConfigError)
      throw new ConfigError(`kvgate: ${source}: ${keyPath(['routing', ...err.path])}: ${err.message}`);
    throw err;
  }
  return config;
}

function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  for (const o of ENV_OVERRIDES) {
    const value = env[o.env];
    if (value === undefined || value === '') continue;
    let typed: unknown = value;
    if (o.kind === 'int') {
      if (!/^\d+$/.test(value)) throw new ConfigError(`kvgate: ${o.env} must be an integer, got '${value}'`);
      typed = Number(value);
    }
    let node = raw;
    for (const key of o.path.slice(0, -1)) {
      const next = node[key];
      if (typeof next !== 'object' || next === null) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    node[o.path[o.path.length - 1]!] = typed;
  }
  return raw;
}

/**
 * A misspelt key (`modles:`) also leaves the real one missing; the unknown key is the
 * cause, so it is reported first when both are about the same object.
 */
function firstIssue(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue {
  const first = issues[0]!;
  const unknown = issues.find(
    (i) =>
      i.code === 'unrecognized_keys' &&
      i.path.length < first.path.length &&
      i.path.every((p, n) => p === first.path[n]),
  );
  return unknown ?? first;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const at = issue.path.length > 0 ? keyPath(issue.path) : '(top level)';
  if (issue.code === 'unrecognized_keys')
    return `${at}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `'${k}'`).join(', ')}`;
  return `${at}: ${issue.message}`;
}

/** `fleet.workers[1].id` style, as an operator would write it. */
export function keyPath(path: readonly (string | number | symbol)[]): string {
  return path.reduce<string>(
    (acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)),
    '',
  );
}
