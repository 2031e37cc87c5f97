import { badRequest } from '../errors.js';
import type { InferenceRequest } from '../request.js';
import { jsonObject } from './body.js';

/** The inputs of each pooling route, by the field vLLM reads. */
const INPUT_FIELDS: Record<string, readonly string[]> = {
  embeddings: ['input'],
  pooling: ['input'],
  score: ['text_1', 'text_2'],
  rerank: ['query', 'documents'],
};

/**
 * Parses an embeddings, pooling, score or rerank body: the model and how much
 * input there is. These have no decode phase and no prefix worth chasing, so
 * they route by load (the body carries no prompt for the strategies to hash).
 */
export function parsePooling(raw: Buffer, route: string): InferenceRequest {
  const b = jsonObject(raw);
  if (typeof b.model !== 'string' || b.model === '')
    throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  let chars = 0;
  for (const field of INPUT_FIELDS[route] ?? ['input']) {
    const v = b[field];
    if (v === undefined || v === null) throw badRequest(`'${field}' is required`, field, 'missing_required_parameter');
    chars += JSON.stringify(v).length;
  }
  return {
    kind: 'completion',
    raw,
    body: { model: b.model },
    model: b.model,
    stream: false,
    estimatedPromptTokens: Math.ceil(chars / 4),
    maxTokens: 1,
  };
}
