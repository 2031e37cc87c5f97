import t from 'tap';
import { Unpackr } from 'msgpackr';
import { Subscriber } from 'zeromq';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { startSimWorker } from '../../../bench/sim/worker.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

const MODEL = 'Qwen/Qwen3-0.6B';
const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);
const w = await startSimWorker({
  tokenizer,
  timing: { speedup: 20 },
  kvEvents: { endpoint: 'tcp://127.0.0.1:*' },
});
t.teardown(() => w.close());

async function post(path: string, body: unknown): Promise<{ status: number; text: string; type: string | null }> {
  const res = await fetch(`${w.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, text: await res.text(), type: res.headers.get('content-type') };
}

interface Completion {
  model: string;
  usage: { prompt_tokens_details: { cached_tokens: number } };
}
interface ErrorBody {
  error: { message: string; type: string; code: number };
}
interface StoredEvent {
  type: string;
  lora_name?: string | null;
  lora_id?: number | null;
  extra_keys?: unknown[];
}
const parse = <T>(text: string): T => JSON.parse(text) as T;

const prompt = Array.from({ length: 64 }, (_, i) => 1000 + i);
const complete = async (model: string) => {
  const r = await post('/v1/completions', { model, prompt, max_tokens: 1 });
  return { status: r.status, json: parse<Completion>(r.text) };
};

void t.test("vLLM's LoRA routes: load, list with parent, use, unload, and their errors", async (t) => {
  const missing = await post('/v1/load_lora_adapter', { lora_name: 'sql' });
  t.equal(missing.status, 400);
  t.match(parse<ErrorBody>(missing.text), {
    error: { message: "Both 'lora_name' and 'lora_path' must be provided.", type: 'InvalidUserInput', code: 400 },
  });
  t.equal((await complete('sql')).status, 404, 'not loaded yet: unknown model');

  const ok = await post('/v1/load_lora_adapter', { lora_name: 'sql', lora_path: '/adapters/sql' });
  t.equal(ok.status, 200);
  t.equal(ok.text, "Success: LoRA adapter 'sql' added successfully.");
  t.match(ok.type, /^text\/plain/);
  const again = await post('/v1/load_lora_adapter', { lora_name: 'sql', lora_path: '/adapters/sql' });
  t.equal(again.status, 400);
  t.match(parse<ErrorBody>(again.text).error.message, "The lora adapter 'sql' has already been loaded.");

  const models = (await (await fetch(`${w.url}/v1/models`)).json()) as { data: unknown[] };
  t.match(models.data, [
    { id: MODEL, parent: null },
    { id: 'sql', object: 'model', root: '/adapters/sql', parent: MODEL },
  ]);

  const used = await complete('sql');
  t.equal(used.status, 200);
  t.equal(used.json.model, 'sql', 'the response names the adapter');
  const tok = await post('/tokenize', { model: 'sql', prompt: 'hello' });
  t.equal(tok.status, 200, '/tokenize takes the adapter name too');

  const gone = await post('/v1/unload_lora_adapter', { lora_name: 'sql' });
  t.equal(gone.status, 200);
  t.equal(gone.text, "Success: LoRA adapter 'sql' removed successfully.");
  const twice = await post('/v1/unload_lora_adapter', { lora_name: 'sql' });
  t.equal(twice.status, 404);
  t.match(parse<ErrorBody>(twice.text), {
    error: { message: "The lora adapter 'sql' cannot be found.", type: 'NotFoundError', code: 404 },
  });
  const noName = await post('/v1/unload_lora_adapter', {});
  t.equal(noName.status, 400);
  t.equal((await complete('sql')).status, 404, 'unloaded: unknown model again');
});

void t.test("an adapter's blocks hash apart from the base model's, and its events name it", async (t) => {
  const unpackr = new Unpackr({ int64AsType: 'bigint', mapsAsObjects: true, useRecords: false });
  const sub = new Subscriber({ linger: 0 });
  sub.connect(w.kvEvents!);
  sub.subscribe();
  const events: StoredEvent[] = [];
  const loop = (async () => {
    try {
      for await (const frames of sub) events.push(...(unpackr.unpack(frames[2]!) as [number, StoredEvent[]])[1]);
    } catch {
      /* closed */
    }
  })();
  t.teardown(async () => {
    sub.close();
    await loop;
  });
  await post('/v1/load_lora_adapter', { lora_name: 'chat', lora_path: '/adapters/chat' });
  const base = await complete(MODEL);
  const baseAgain = await complete(MODEL);
  t.ok(baseAgain.json.usage.prompt_tokens_details.cached_tokens >= 48, 'the base model hits its own blocks');
  const lora = await complete('chat');
  t.equal(lora.json.usage.prompt_tokens_details.cached_tokens, 0, "the adapter does not hit the base model's blocks");
  const loraAgain = await complete('chat');
  t.ok(loraAgain.json.usage.prompt_tokens_details.cached_tokens >= 48, 'the adapter hits its own blocks');
  t.ok(base.status === 200);

  // The slow joiner may miss the first batches; later stored events of both kinds arrive.
  for (let i = 0; i < 100 && !events.some((e) => e.lora_name === 'chat'); i++) {
    await post('/v1/completions', { model: 'chat', prompt: prompt.map((p) => p + i + 1), max_tokens: 1 });
    await new Promise((r) => setTimeout(r, 50));
  }
  const stored = events.find((e) => e.type === 'BlockStored' && e.lora_name === 'chat');
  t.ok(stored, 'a BlockStored names the adapter');
  t.ok(typeof stored?.lora_id === 'number' && stored.lora_id >= 1, `lora_id ${stored?.lora_id}`);
  t.same(stored?.extra_keys?.[0], ['chat'], "every block's extra keys carry the adapter name");
});
