import { fleetConfig, type SimWorkerLine } from '../fixtures/gateway.js';

/** `fleetConfig` with worker roles (by index) and a `disaggregation` section. */
export function pdConfig(workers: readonly SimWorkerLine[], roles: readonly string[], disaggregation: Record<string, unknown> = {}, routing: Record<string, unknown> = { strategy: 'kv' }, health: Record<string, unknown> = { intervalMs: 200, timeoutMs: 500 }): Record<string, unknown> {
  const config = fleetConfig(workers, routing, { disaggregation }) as { fleet: { health: unknown; workers: Record<string, unknown>[] } };
  config.fleet.health = health;
  config.fleet.workers.forEach((w, i) => (w.role = roles[i] ?? 'both'));
  return config;
}

/** A prompt of about `words` tokens that no other test shares. */
export function longText(tag: string, words: number): string {
  const out: string[] = [tag];
  for (let i = 0; i < words; i++) out.push(`w${(i * 7919) % 1000}`);
  return out.join(' ');
}
