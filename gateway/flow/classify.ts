import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { badRequest } from '../front/errors.js';
import { compileMatch, type Matcher, type MatchInput } from '../routing/policies/match.js';
import type { FlowClassConfig, FlowConfig } from './config.js';

export const TTFT_HEADER = 'x-kvgate-ttft-ms';
export const TPOT_HEADER = 'x-kvgate-tpot-ms';
/** Milliseconds from arrival by which the request should start; orders requests inside a tenant. */
export const DEADLINE_HEADER = 'x-kvgate-deadline-ms';

/** Who a request is and what it asks for, decided once when it arrives. */
export interface FlowIdentity {
  readonly cls: FlowClassConfig;
  /** Index in the class list: 0 is the highest priority. */
  readonly rank: number;
  /** The fairness key (never shown: an API key is hashed). */
  readonly tenant: string;
  /** The tenant's metric label: its name, or `other` beyond `tenants.maxLabels`. */
  readonly label: string;
  readonly weight: number;
  readonly ttftMs: number | undefined;
  readonly tpotMs: number | undefined;
  /** Relative deadline from the header, if any. */
  readonly deadlineMs: number | undefined;
}

const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

function msHeader(headers: IncomingHttpHeaders, name: string): number | undefined {
  const raw = first(headers[name]);
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(v) || v < 1)
    throw badRequest(`${name} must be a positive whole number of milliseconds, got '${raw.slice(0, 40)}'`, name);
  return v;
}

/**
 * Places a request in a class and a tenant: the class header, then the API key table,
 * then the classes' policy matches in order, then the default class.
 */
export class Classifier {
  readonly #config: FlowConfig;
  readonly #byName = new Map<string, { cls: FlowClassConfig; rank: number }>();
  readonly #matchers: { matches: Matcher; cls: FlowClassConfig; rank: number }[] = [];
  readonly #labels = new Set<string>();

  constructor(config: FlowConfig) {
    this.#config = config;
    config.classes.forEach((cls, rank) => {
      this.#byName.set(cls.name, { cls, rank });
      if (cls.match) this.#matchers.push({ matches: compileMatch(cls.match), cls, rank });
    });
    for (const t of Object.keys(config.tenants.weights)) this.#labels.add(t);
  }

  classify(input: MatchInput): FlowIdentity {
    const { headers } = input;
    const c = this.#config;
    const key = bearer(headers.authorization);
    const byKey = key === undefined ? undefined : c.apiKeys[key];
    let placed: { cls: FlowClassConfig; rank: number } | undefined;
    const named = c.classHeader ? first(headers[c.classHeader]) : undefined;
    if (named !== undefined) {
      placed = this.#byName.get(named.trim().toLowerCase());
      if (!placed)
        throw badRequest(
          `${c.classHeader}: unknown priority class '${named.slice(0, 40)}' (classes: ${[...this.#byName.keys()].join(', ')})`,
          c.classHeader,
          'unknown_priority_class',
        );
    }
    if (!placed && byKey?.class !== undefined) placed = this.#byName.get(byKey.class);
    if (!placed) placed = this.#matchers.find((m) => m.matches(input));
    placed ??= this.#byName.get(c.defaultClass)!;

    const fromHeader = c.tenants.header ? first(headers[c.tenants.header])?.trim() : undefined;
    let tenant = fromHeader ? fromHeader.slice(0, 128) : byKey?.tenant;
    if (tenant === undefined && key !== undefined && c.tenants.fromApiKey)
      tenant = `key:${createHash('sha256').update(key).digest('hex').slice(0, 12)}`;
    tenant ??= 'anonymous';

    return {
      cls: placed.cls,
      rank: placed.rank,
      tenant,
      label: this.label(tenant),
      weight: c.tenants.weights[tenant] ?? 1,
      ttftMs: msHeader(headers, TTFT_HEADER) ?? placed.cls.ttftMs,
      tpotMs: msHeader(headers, TPOT_HEADER) ?? placed.cls.tpotMs,
      deadlineMs: msHeader(headers, DEADLINE_HEADER),
    };
  }

  /** Metric label of a tenant: the first `maxLabels` distinct tenants keep theirs, later ones share `other`. */
  label(tenant: string): string {
    if (this.#labels.has(tenant)) return tenant;
    if (this.#labels.size >= this.#config.tenants.maxLabels) return 'other';
    this.#labels.add(tenant);
    return tenant;
  }
}

function bearer(header: string | undefined): string | undefined {
  if (!header?.startsWith('Bearer ')) return undefined;
  const key = header.slice(7).trim();
  return key.length > 0 ? key : undefined;
}
