import t from 'tap';
import { plannerConfigSchema } from '../../../gateway/disagg/config.js';
import { Planner } from '../../../gateway/disagg/planner.js';

/**
 * Simulated traffic fed to the planner with a fake clock: each worker prefills
 * at 10k tokens/s and decodes 1000 tokens/s; requests arrive at 4/s.
 */
function drive(
  planner: Planner,
  now: { t: number },
  seconds: number,
  promptTokens: number,
  outputTokens: number,
): void {
  const rate = 4;
  for (let i = 0; i < seconds * rate; i++) {
    now.t += 1000 / rate;
    planner.arrival('pool', promptTokens, promptTokens);
    planner.prefillStarted('pool', 'p0');
    now.t += (promptTokens / 10_000) * 1000;
    planner.prefillEnded('pool', 'p0', promptTokens);
    planner.decodeStarted('pool', 'd0');
    now.t += (outputTokens / 1000) * 1000;
    planner.decodeEnded('pool', 'd0', outputTokens);
    planner.finished('pool', (promptTokens / 10_000) * 1000, 1, outputTokens);
    now.t -= (promptTokens / 10_000) * 1000 + (outputTokens / 1000) * 1000; // arrivals keep their own pace
  }
}

t.test('the recommendation follows the traffic from short to long prompts', async (t) => {
  const now = { t: 0 };
  const planner = new Planner(
    plannerConfigSchema.parse({ windowSeconds: 60, targetTtftMs: 2000, targetItlMs: 50 }),
    () => now.t,
    () => ({ prefill: 1, decode: 1, both: 0 }),
  );
  const idle = planner.snapshot('pool');
  t.equal(idle.basis, 'no traffic in window');
  t.equal(idle.prefill.recommended, 1, 'without traffic the advice is the current count');

  drive(planner, now, 60, 500, 400);
  const short = planner.snapshot('pool');
  t.equal(short.basis, 'measured');
  t.equal(short.inputs.meanUncachedPromptTokens, 500);
  t.ok(Math.abs(short.inputs.prefillTokensPerSPerWorker! - 10_000) < 1, 'prefill throughput measured while busy');
  t.ok(Math.abs(short.inputs.decodeTokensPerSPerWorker! - 1000) < 1);

  drive(planner, now, 60, 16_000, 400);
  const long = planner.snapshot('pool');
  t.equal(long.inputs.meanUncachedPromptTokens, 16_000, 'the window has moved on to the long prompts');
  t.ok(
    long.prefill.recommended > short.prefill.recommended,
    `prefill workers ${short.prefill.recommended} -> ${long.prefill.recommended}`,
  );
  t.equal(long.decode.recommended, short.decode.recommended, 'the same output lengths need the same decode workers');
  t.ok(
    long.prefill.recommended / long.decode.recommended > short.prefill.recommended / short.decode.recommended,
    'the P:D ratio rises',
  );
  // 4 req/s × 16000 tokens = 64k tokens/s of prefill at 10k tokens/s per worker: at least 7 workers even at full use.
  t.ok(long.prefill.recommended >= 7);
  t.ok(long.prefill.utilisationTarget! <= 0.8);
});

t.test('an ITL above target asks for more decode workers; an unreachable TTFT says so', async (t) => {
  const now = { t: 0 };
  const planner = new Planner(
    plannerConfigSchema.parse({ targetTtftMs: 100, targetItlMs: 10 }),
    () => now.t,
    () => ({ prefill: 1, decode: 1, both: 0 }),
  );
  for (let i = 0; i < 100; i++) {
    now.t += 250;
    planner.arrival('pool', 4000, 4000);
    planner.prefillStarted('pool', 'p0');
    now.t += 400;
    planner.prefillEnded('pool', 'p0', 4000);
    planner.decodeStarted('pool', 'd0');
    now.t += 100;
    planner.decodeEnded('pool', 'd0', 100);
    planner.finished('pool', 400, 40, 100);
    now.t -= 500;
  }
  const s = planner.snapshot('pool');
  t.equal(s.prefill.ttftReachable, false, 'a 400 ms prefill cannot meet a 100 ms TTFT target');
  t.equal(s.decode.capacityTokensPerS, 250, '1000 tokens/s at 40 ms ITL is credited 1000 × 10/40');
  t.equal(s.decode.recommended, 2, '400 tokens/s of demand over 250 tokens/s per worker');
});
