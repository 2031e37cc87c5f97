import type { IncomingHttpHeaders } from 'node:http';
import type { InferenceRequest } from './request.js';
import type { Strategy } from './strategies/strategy.js';

/**
 * The first step of the pipeline: decides which strategy handles a request, or
 * refuses it by throwing a `GatewayError` (quotas, model locks, tenant rules go here).
 */
export interface Policy {
  readonly name: string;
  select(request: InferenceRequest, headers: IncomingHttpHeaders): Strategy;
}

/** Every request goes to the configured strategy. */
export function createDefaultPolicy(strategy: Strategy): Policy {
  return { name: 'default', select: () => strategy };
}
