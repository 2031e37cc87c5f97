import t from 'tap';
import { request } from 'undici';
import { startSimWorker } from '../../../bench/sim/worker.js';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

/** The simulator's NixlConnector protocol, without a gateway: what a proxy sends and gets back. */
const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);
const PREFILL_PARAMS = {
  do_remote_decode: true,
  do_remote_prefill: false,
  remote_engine_id: null,
  remote_block_ids: null,
  remote_host: null,
  remote_port: null,
};
const prompt = Array.from({ length: 1000 }, (_, i) => 1000 + i);
const post = async (url: string, body: unknown) => {
  const r = await request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.statusCode, json: (await r.body.json()) as Record<string, any> };
};

t.test(
  'prefill returns kv_transfer_params, decode pulls, reports them cached, and frees the prefill blocks',
  async (t) => {
    const p = await startSimWorker({ id: 'p', tokenizer, role: 'prefill', timing: { speedup: 20 } });
    const d = await startSimWorker({ id: 'd', tokenizer, role: 'decode', timing: { speedup: 20 } });
    t.teardown(() => Promise.all([p.close(), d.close()]));
    const pre = await post(p.url, { prompt, max_tokens: 1, kv_transfer_params: PREFILL_PARAMS });
    t.equal(pre.status, 200);
    const kv = pre.json.kv_transfer_params;
    t.match(kv, {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_engine_id: p.engineId,
      remote_request_id: pre.json.id,
      remote_host: '127.0.0.1',
      remote_port: Number(new URL(p.url).port),
      tp_size: 1,
      remote_num_tokens: 1000,
    });
    t.equal(kv.remote_block_ids.length, Math.ceil(1000 / 16), 'one block id per prompt block');
    t.equal(p.stats().kvBlocksUsed, Math.ceil(1001 / 16), 'the prefill blocks stay referenced');
    t.equal(p.stats().nixlHeld, 1);

    const dec = await post(d.url, { prompt, max_tokens: 3, kv_transfer_params: kv });
    t.equal(dec.status, 200);
    t.same(dec.json.usage.prompt_tokens_details, { cached_tokens: 999 });
    t.equal(dec.json.kv_transfer_params, null);
    const s = d.stats();
    t.match(s, { kvLoads: 1, kvLoadTokens: 999, kvLoadFailures: 0, prefillTokensComputed: 1 });
    t.equal(s.kvBlocksCached, Math.floor(999 / 16), 'pulled blocks are cached on the decode worker');
    t.equal(p.stats().kvBlocksUsed, 0, 'released once pulled');
    t.equal(p.stats().nixlPulled, 1);
    const metrics = await (await request(`${d.url}/metrics`)).body.text();
    t.match(metrics, /vllm:external_prefix_cache_hits_total\{model_name="[^"]+",engine="0"\} 999/);

    // A second pull of the same blocks fails (already released): the decode worker recomputes.
    const again = await post(d.url, { prompt: [...prompt, 7], max_tokens: 1, kv_transfer_params: kv });
    t.equal(again.status, 200);
    t.equal(d.stats().kvLoadFailures, 1);
    t.equal(again.json.usage.prompt_tokens_details.cached_tokens, 992, 'only its own cache hit (62 blocks)');
  },
);

t.test('invalid params are ignored (recompute); unpulled blocks expire', async (t) => {
  const p = await startSimWorker({ id: 'p2', tokenizer, timing: { speedup: 20 }, nixl: { abortTimeoutS: 2 } });
  t.teardown(() => p.close());
  const bad = await post(p.url, {
    prompt,
    max_tokens: 2,
    kv_transfer_params: { do_remote_prefill: true, remote_block_ids: [1] },
  });
  t.equal(bad.status, 200);
  t.equal(bad.json.usage.prompt_tokens_details.cached_tokens, 0);
  t.equal(p.stats().kvLoads, 0);
  await post(p.url, { prompt: [5, ...prompt], max_tokens: 1, kv_transfer_params: PREFILL_PARAMS });
  t.equal(p.stats().nixlHeld, 1);
  const deadline = Date.now() + 5000;
  while (p.stats().nixlHeld > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal(p.stats().nixlExpired, 1, 'freed after 2 simulated seconds (0.1 s at speed-up 20)');
  t.equal(p.stats().kvBlocksUsed, 0);
});
