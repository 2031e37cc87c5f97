/** Settings of fleet-wide fairness (`flow.tenants.fleetShare`). */
export interface FleetShareConfig {
  /** Half-life of a tenant's recorded use, in ms: how far back "recently" reaches. */
  readonly halfLifeMs: number;
  /** A tenant is over its share when its use exceeds this many times its fair share. */
  readonly tolerance: number;
}

interface TenantUse {
  readonly label: string;
  weight: number;
  /** Decayed prompt tokens dispatched, as of `at`. */
  tokens: number;
  at: number;
  /** Requests of this tenant waiting in the gateway: a starved tenant is still active. */
  queued: number;
}

/** Use this small a fraction of the total (after decay) counts as gone. */
const GONE = 1e-3;

/**
 * Each tenant's recent use of the fleet, for fairness across classes
 * (`tenants.fairness: fleet`): prompt tokens dispatched, decayed exponentially.
 * A tenant whose share of that use exceeds its weighted share among the active
 * tenants (those with recent use or a queued request) by more than `tolerance`
 * is over its share; flow control then releases every other tenant's held
 * requests, whatever their class, before its own. This is max-min fairness in
 * effect: tenants within their share get what they ask; an over-share tenant
 * gets what they leave, and classes still order each tenant's own requests.
 */
export class TenantShares {
  readonly #c: FleetShareConfig;
  readonly #use = new Map<string, TenantUse>();

  constructor(config: FleetShareConfig) {
    this.#c = config;
  }

  /** A request of `tenant` was dispatched with `tokens` prompt tokens. */
  dispatched(tenant: string, label: string, weight: number, tokens: number, now: number): void {
    const u = this.#entry(tenant, label, weight, now);
    u.tokens += tokens;
  }

  /** A request of `tenant` joined (`+1`) or left (`-1`) the gateway queue. */
  queued(tenant: string, label: string, weight: number, delta: 1 | -1, now: number): void {
    this.#entry(tenant, label, weight, now).queued += delta;
  }

  /** The tenants over their share now; empty when none is (or fewer than two are active). */
  overShare(now: number): Set<string> {
    const over = new Set<string>();
    for (const s of this.#measure(now)) if (s.over) over.add(s.tenant);
    return over;
  }

  /** `/debug/flow`: each active tenant's share of recent use against its fair share. */
  snapshot(now: number): { tenant: string; useShare: number; fairShare: number; overShare: boolean }[] {
    const round = (x: number) => Math.round(x * 1000) / 1000;
    return this.#measure(now).map((s) => ({
      tenant: s.label,
      useShare: round(s.useShare),
      fairShare: round(s.fairShare),
      overShare: s.over,
    }));
  }

  /**
   * Decays every entry to `now`, forgets the gone ones, and measures the active: each one's share
   * of their use, its weighted fair share, and whether it is over by more than the tolerance
   * (nobody is, alone or before any use).
   */
  #measure(now: number): { tenant: string; label: string; useShare: number; fairShare: number; over: boolean }[] {
    let all = 0;
    for (const u of this.#use.values()) all += this.#decay(u, now);
    const active: [string, TenantUse][] = [];
    for (const [tenant, u] of this.#use) {
      if (u.queued > 0 || u.tokens > GONE * all) active.push([tenant, u]);
      else this.#use.delete(tenant);
    }
    const total = active.reduce((n, [, u]) => n + u.tokens, 0);
    const weights = active.reduce((n, [, u]) => n + u.weight, 0);
    return active.map(([tenant, u]) => {
      const useShare = total > 0 ? u.tokens / total : 0;
      const fairShare = u.weight / weights;
      return {
        tenant,
        label: u.label,
        useShare,
        fairShare,
        over: active.length >= 2 && useShare > this.#c.tolerance * fairShare,
      };
    });
  }

  #entry(tenant: string, label: string, weight: number, now: number): TenantUse {
    let u = this.#use.get(tenant);
    if (!u) this.#use.set(tenant, (u = { label, weight, tokens: 0, at: now, queued: 0 }));
    u.weight = weight;
    this.#decay(u, now);
    return u;
  }

  #decay(u: TenantUse, now: number): number {
    if (now > u.at) {
      u.tokens *= Math.pow(0.5, (now - u.at) / this.#c.halfLifeMs);
      u.at = now;
    }
    return u.tokens;
  }
}
