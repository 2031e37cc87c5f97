/**
 * Time to first token of a ~4k-token prompt, cold then warm (prefix cached),
 * as a streaming client sees it. Against a running worker:
 *   node dist/bench/sim/measure-ttft.js http://127.0.0.1:8001
 * or, without an argument, against an in-process worker at --speedup 1.
 */
import { startSimWorker } from './worker.js';

const TOKENS = 4096;

async function ttft(url: string, prompt: string): Promise<{ ms: number; cached: number; promptTokens: number }> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 2, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ms = -1;
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (ms < 0) ms = performance.now() - started;
    text += decoder.decode(chunk, { stream: true });
  }
  const usage = text
    .split('\n\n')
    .filter((e) => e.startsWith('data: {'))
    .map(
      (e) =>
        JSON.parse(e.slice(6)) as {
          usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
        },
    )
    .find((e) => e.usage)!.usage!;
  return { ms, cached: usage.prompt_tokens_details.cached_tokens, promptTokens: usage.prompt_tokens };
}

/** English-ish text of about `tokens` tokens (one token per word for this vocabulary), unique per `salt`. */
function promptText(tokens: number, salt: number): string {
  const words = ['cache', 'block', 'token', 'engine', 'router', 'prefix', 'memory', 'request', 'worker', 'batch'];
  const out: string[] = [`Run ${salt}:`];
  for (let i = 0; out.length < tokens - 4; i++) out.push(words[(i * 7 + salt) % words.length]!);
  return out.join(' ');
}

const url = process.argv[2];
const worker = url ? undefined : await startSimWorker({});
const target = url ?? worker!.url;
const rows: string[] = [];
for (let run = 1; run <= 3; run++) {
  const prompt = promptText(TOKENS, run);
  const cold = await ttft(target, prompt);
  const warm = await ttft(target, prompt);
  rows.push(
    `run ${run}: prompt ${cold.promptTokens} tokens; cold TTFT ${cold.ms.toFixed(1)} ms (cached ${cold.cached}); warm TTFT ${warm.ms.toFixed(1)} ms (cached ${warm.cached})`,
  );
}
process.stdout.write(rows.join('\n') + '\n');
await worker?.close();
