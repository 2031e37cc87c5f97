import { badRequest } from '../errors.js';

/** The body as a JSON object, or a 400 saying why not. */
export function jsonObject(raw: Buffer): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badRequest(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw badRequest('request body must be a JSON object', null, 'invalid_json');
  return body as Record<string, unknown>;
}

type JsonType = 'boolean' | 'number' | 'string' | 'array';

/** An optional field: absent or null, or of the type. */
export function optionalType(b: Record<string, unknown>, name: string, type: JsonType): void {
  const v = b[name];
  if (v === undefined || v === null) return;
  const ok =
    type === 'array'
      ? Array.isArray(v)
      : type === 'number'
        ? typeof v === 'number' && Number.isFinite(v) && v >= 0
        : typeof v === type;
  if (!ok)
    throw badRequest(
      `'${name}' must be ${type === 'array' ? 'an array' : type === 'number' ? 'a non-negative number' : `a ${type}`}`,
      name,
      'invalid_type',
    );
}
