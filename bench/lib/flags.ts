/** A bad command-line value: the benchmark prints its message as one line and exits 2. */
export class UsageError extends Error {}

/**
 * `--<name>` given as a JSON object (strategy parameters); {} when absent.
 * `example` is shown in the error, so the user sees the expected shape.
 */
export function jsonObjectFlag(name: string, raw: string | undefined, example: string): Record<string, unknown> {
  if (raw === undefined) return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    v = undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new UsageError(`--${name} must be a JSON object such as '${example}', got ${raw}`);
  return v as Record<string, unknown>;
}
