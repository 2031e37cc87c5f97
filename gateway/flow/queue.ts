/** One request waiting in the gateway, as the queue sees it. */
export interface QueueItem {
  /** Index of its class: 0 is released first. */
  readonly rank: number;
  readonly tenant: string;
  readonly weight: number;
  /** Arrival time (ms, the flow's clock). */
  readonly arrival: number;
  /** Orders requests inside a tenant: arrival + the request's deadline, or + its class TTL without one. */
  readonly deadline: number;
  readonly sheddable: boolean;
  /** Arrival order, the tie-break: equal deadlines go first come, first served. */
  readonly seq: number;
}

interface TenantQueue<T extends QueueItem> {
  readonly name: string;
  readonly items: T[];
  weight: number;
  /** Deficit round robin credit, in requests. */
  deficit: number;
}

interface ClassQueue<T extends QueueItem> {
  readonly tenants: Map<string, TenantQueue<T>>;
  /** Tenants with queued requests, in round robin order. */
  readonly ring: TenantQueue<T>[];
  cursor: number;
  size: number;
}

/**
 * Priority classes, each a deficit round robin over its tenants (quantum = the
 * tenant's weight, cost one request), each tenant ordered by deadline. A tenant
 * sending ten times its share only lengthens its own queue: every turn it gets
 * its quantum like the others.
 */
export class FlowQueue<T extends QueueItem> {
  readonly #classes: ClassQueue<T>[];
  #size = 0;

  constructor(classes: number) {
    this.#classes = Array.from({ length: classes }, () => ({ tenants: new Map(), ring: [], cursor: 0, size: 0 }));
  }

  get size(): number {
    return this.#size;
  }

  sizeOf(rank: number): number {
    return this.#classes[rank]!.size;
  }

  push(item: T): void {
    const c = this.#classes[item.rank]!;
    let t = c.tenants.get(item.tenant);
    if (!t) {
      t = { name: item.tenant, items: [], weight: item.weight, deficit: 0 };
      c.tenants.set(item.tenant, t);
      c.ring.push(t);
    }
    const items = t.items;
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (before(items[mid]!, item)) lo = mid + 1;
      else hi = mid;
    }
    items.splice(lo, 0, item);
    c.size++;
    this.#size++;
  }

  /** Takes a queued item out (shed, expired, client gone); false if it was not queued. */
  remove(item: T): boolean {
    const c = this.#classes[item.rank]!;
    const t = c.tenants.get(item.tenant);
    const i = t ? t.items.indexOf(item) : -1;
    if (!t || i === -1) return false;
    t.items.splice(i, 1);
    c.size--;
    this.#size--;
    if (t.items.length === 0) this.#drop(c, t);
    return true;
  }

  /**
   * The next request to release among those `canGo` accepts, removed from the queue:
   * the highest class first, tenants in deficit round robin, deadline order inside a tenant.
   * A tenant whose head cannot go (its workers are full) is passed over without losing its credit.
   * With `prefer`, a class first offers the turn to the tenants whose head it accepts (a request
   * whose cached worker just got room), then to the others: the turn is still charged to the
   * tenant that takes it, so the shares hold over time. With `fallback`, a class none of whose
   * heads `canGo` accepts is asked again with it before the next class gets the turn.
   */
  next(canGo: (item: T) => boolean, prefer?: (item: T) => boolean, fallback?: (item: T) => boolean): T | undefined {
    for (const c of this.#classes) {
      if (c.size === 0) continue;
      const found =
        (prefer && this.#outOfTurn(c, prefer)) || this.#scan(c, canGo) || (fallback && this.#scan(c, fallback));
      if (found) return found;
    }
    return undefined;
  }

  /**
   * A preferred head served before its turn comes: its tenant pays with the turn (its credit goes
   * below zero, and the next visit only brings it back), and may not go out of turn again while it owes.
   * The round robin carries on from where it was for everyone else.
   */
  #outOfTurn(c: ClassQueue<T>, prefer: (item: T) => boolean): T | undefined {
    for (let k = 0; k < c.ring.length; k++) {
      const t = c.ring[(c.cursor + k) % c.ring.length]!;
      if (t.deficit < 0 || !prefer(t.items[0]!)) continue;
      const head = t.items.shift()!;
      t.deficit -= 1;
      c.size--;
      this.#size--;
      if (t.items.length === 0) this.#drop(c, t);
      return head;
    }
    return undefined;
  }

  #scan(c: ClassQueue<T>, canGo: (item: T) => boolean): T | undefined {
    const blocked = new Set<TenantQueue<T>>();
    // Each tenant gains at least its weight per visit, from at worst one turn owed (see #outOfTurn),
    // so this many visits serve someone unless all are blocked.
    let budget = c.ring.reduce((n, t) => n + Math.ceil(2 / Math.min(1, t.weight)) + 1, 0);
    while (blocked.size < c.ring.length && budget-- > 0) {
      if (c.cursor >= c.ring.length) c.cursor = 0;
      const t = c.ring[c.cursor]!;
      if (blocked.has(t)) {
        c.cursor++;
        continue;
      }
      if (t.deficit < 1) {
        t.deficit += t.weight;
        if (t.deficit < 1) {
          c.cursor++;
          continue;
        }
      }
      const head = t.items[0]!;
      if (!canGo(head)) {
        blocked.add(t);
        c.cursor++;
        continue;
      }
      t.items.shift();
      t.deficit -= 1;
      c.size--;
      this.#size--;
      if (t.items.length === 0) this.#drop(c, t);
      else if (t.deficit < 1) c.cursor++;
      return head;
    }
    return undefined;
  }

  /** The longest-waiting queued request of a sheddable class ranked below `rank`, if any. */
  oldestSheddableBelow(rank: number): T | undefined {
    let oldest: T | undefined;
    for (let r = rank + 1; r < this.#classes.length; r++) {
      for (const t of this.#classes[r]!.ring) {
        for (const item of t.items) {
          if (item.sheddable && (!oldest || item.seq < oldest.seq)) oldest = item;
        }
      }
    }
    return oldest;
  }

  /** Every queued item of a class, tenant by tenant (for the debug view). */
  *itemsOf(rank: number): Iterable<[string, readonly T[]]> {
    for (const t of this.#classes[rank]!.ring) yield [t.name, t.items];
  }

  #drop(c: ClassQueue<T>, t: TenantQueue<T>): void {
    const i = c.ring.indexOf(t);
    c.ring.splice(i, 1);
    if (i < c.cursor) c.cursor--;
    c.tenants.delete(t.name);
  }
}

function before(a: QueueItem, b: QueueItem): boolean {
  return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq);
}
