/**
 * A consistent-hash ring with virtual nodes (Karger et al. 1997): each member
 * owns `virtualNodes` points; a key goes to the first point clockwise from its
 * hash. Removing a member moves only the keys it owned.
 */
export class HashRing<T extends { readonly id: string }> {
  readonly #points: Uint32Array;
  readonly #owners: T[];

  constructor(members: readonly T[], virtualNodes: number) {
    const points: { hash: number; member: T }[] = [];
    for (const m of members) {
      for (let v = 0; v < virtualNodes; v++) points.push({ hash: hash32(`${m.id}#${v}`), member: m });
    }
    // Ties on hash are broken by id so the ring does not depend on member order.
    points.sort((a, b) => a.hash - b.hash || (a.member.id < b.member.id ? -1 : a.member.id > b.member.id ? 1 : 0));
    this.#points = Uint32Array.from(points, (p) => p.hash);
    this.#owners = points.map((p) => p.member);
  }

  /** The member owning `key`; undefined only for an empty ring. */
  get(key: string): T | undefined {
    const n = this.#points.length;
    if (n === 0) return undefined;
    const h = hash32(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return this.#owners[lo === n ? 0 : lo];
  }
}

/** FNV-1a over UTF-16 code units, finished with murmur3's fmix32 so nearby keys spread. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
