/**
 * What admission (gateway/front/overload.ts) and flow control need of a client's
 * response: to answer a 429 on it, and to hear when the client left. An HTTP
 * `ServerResponse` is one; the EPP (gateway/epp/) implements it over an ext_proc
 * stream, where the 429 becomes an ImmediateResponse.
 */
export interface ClientAnswer {
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  once(event: 'close', listener: () => void): unknown;
  writeHead(status: number, headers: Record<string, string | number>): unknown;
  end(body: string): unknown;
}
