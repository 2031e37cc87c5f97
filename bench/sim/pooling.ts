import type { IncomingMessage, ServerResponse } from 'node:http';
import { asObject, checkModel, randomHex, SimHttpError } from './openai.js';
import { runGeneration } from './run.js';
import type { SimServerDeps } from './server.js';
import { readJson, sendJson } from './server.js';

type Obj = Record<string, unknown>;
type Headers = Record<string, string>;
export type PoolingRoute = 'embeddings' | 'pooling' | 'score' | 'rerank';

const bad = (message: string, param: string) => new SimHttpError(400, message, 'BadRequestError', param);

function texts(value: unknown, param: string): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string')) return value;
  throw bad(`${param} must be a string or a non-empty list of strings`, param);
}

/** A small deterministic vector per text, so equal inputs embed equally. */
function vector(ids: readonly number[]): number[] {
  const v = new Array<number>(8).fill(0);
  ids.forEach((id, i) => (v[i % 8]! += ((id * 2654435761) % 1000) / 1000));
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => x / norm);
}

/** `encoding_format: "base64"` (the OpenAI client's default): little-endian float32s, as vLLM sends them. */
function encode(v: number[], format: unknown): number[] | string {
  return format === 'base64' ? Buffer.from(new Float32Array(v).buffer).toString('base64') : v;
}

const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i]!, 0);

/**
 * vLLM's pooling routes (`/v1/embeddings`, `/pooling`, `/score`, `/rerank`):
 * the inputs are prefilled on the simulated engine (one step of work, no
 * decode) so that load is real, then answered in vLLM's shapes.
 */
export function poolingHandler(route: PoolingRoute) {
  return async (d: SimServerDeps, req: IncomingMessage, res: ServerResponse, h: Headers): Promise<void> => {
    const body = asObject(await readJson(req));
    checkModel(body, d.ctx);
    const inputs =
      route === 'score'
        ? [...texts(body.text_1, 'text_1'), ...texts(body.text_2, 'text_2')]
        : route === 'rerank'
          ? [...texts(body.query, 'query'), ...texts(body.documents, 'documents')]
          : texts(body.input, 'input');
    const encoded = await Promise.all(inputs.map((s) => d.ctx.tokenizer.prompt.encode(s, false)));
    const all = encoded.flat();
    if (all.length === 0) throw bad('the input is empty', 'input');
    if (all.length >= d.ctx.maxModelLen) throw bad(`the input has ${all.length} tokens, over max_model_len`, 'input');
    const id = `${route}-${randomHex(16)}`;
    runGeneration(d, res, id, all, 1, 'length', {
      done() {
        const usage = { prompt_tokens: all.length, total_tokens: all.length, completion_tokens: 0 };
        const vecs = encoded.map(vector);
        const created = Math.floor(Date.now() / 1000);
        const model = d.ctx.model;
        let answer: Obj;
        if (route === 'embeddings')
          answer = {
            id,
            object: 'list',
            created,
            model,
            data: vecs.map((v, index) => ({ index, object: 'embedding', embedding: encode(v, body.encoding_format) })),
            usage,
          };
        else if (route === 'pooling')
          answer = {
            id,
            object: 'list',
            created,
            model,
            data: vecs.map((data, index) => ({ index, object: 'pooling', data })),
            usage,
          };
        else {
          const n1 = route === 'score' ? texts(body.text_1, 'text_1').length : 1;
          const left = vecs.slice(0, n1);
          const right = vecs.slice(n1);
          const scores = right.map((v, i) => dot(left[Math.min(i, left.length - 1)]!, v));
          answer =
            route === 'score'
              ? {
                  id,
                  object: 'list',
                  created,
                  model,
                  data: scores.map((score, index) => ({ index, object: 'score', score })),
                  usage,
                }
              : {
                  id,
                  model,
                  usage: { total_tokens: all.length },
                  results: scores
                    .map((relevance_score, index) => ({
                      index,
                      document: { text: inputs[index + 1] },
                      relevance_score,
                    }))
                    .sort((a, b) => b.relevance_score - a.relevance_score),
                };
        }
        sendJson(res, 200, answer, h);
      },
      failed(message) {
        sendJson(res, 400, new SimHttpError(400, message).body(), h);
      },
    });
  };
}
