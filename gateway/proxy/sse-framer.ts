/** Past this, a partial event is passed on anyway: the stream is not SSE as we know it, and holding more would grow memory. */
const MAX_HELD_BYTES = 64 * 1024;

/**
 * SseFramer passes an upstream SSE body on in whole events only (up to the
 * last blank line), holding a partial event back until its end arrives. Then a
 * broken stream can end with one well-formed error event instead of gluing it
 * onto half an event. Engines write whole events per chunk, so usually nothing
 * is held and chunks pass through without a copy.
 */
export class SseFramer {
  #held: Buffer | undefined;
  /** False once a partial event was passed through (oversized), so an error event must start with a blank line. */
  #aligned = true;

  /** What may be written now. */
  push(chunk: Buffer): Buffer {
    const data = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
    this.#held = undefined;
    const cut = eventBoundary(data);
    if (cut === data.length) {
      this.#aligned = true;
      return data;
    }
    if (cut <= 0 && data.length > MAX_HELD_BYTES) {
      this.#aligned = false;
      return data;
    }
    this.#held = cut <= 0 ? data : data.subarray(cut);
    if (cut > 0) this.#aligned = true;
    return cut <= 0 ? EMPTY : data.subarray(0, cut);
  }

  /** The normal end: whatever was held goes out as it is. */
  flush(): Buffer | undefined {
    const rest = this.#held;
    this.#held = undefined;
    return rest;
  }

  /** The final event for a broken stream; the held partial event is dropped (half a JSON object helps no client). */
  errorEvent(json: string): string {
    this.#held = undefined;
    return `${this.#aligned ? '' : '\n\n'}data: ${json}\n\n`;
  }
}

const EMPTY = Buffer.alloc(0);

/** Offset just past the last blank line (`\n\n` or `\r\n\r\n`), or -1. */
function eventBoundary(data: Buffer): number {
  const lf = data.lastIndexOf('\n\n');
  const crlf = data.lastIndexOf('\r\n\r\n');
  return Math.max(lf === -1 ? -1 : lf + 2, crlf === -1 ? -1 : crlf + 4);
}
