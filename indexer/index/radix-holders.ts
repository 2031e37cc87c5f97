/**
 * Node store layout of `RadixIndex` and the holder entries of a node. One
 * Int32Array, 8 ints (32 bytes, half a cache line) per node. A holder entry is
 * `id << 2 | tier flags`; the first two are inline (T0, T1, packed), further
 * ones live in `extra`, keyed by node, with their count in F_EXTRA.
 */
export const STRIDE = 8;
export const F_LO = 0; // our hash, low u32
export const F_HI = 1; // our hash, high u32
export const F_PARENT = 2; // parent node, -1 at the root, FREE when the node is free
export const F_CHILDREN = 3; // number of live children
export const F_T0 = 4; // first holder entry (id << 2 | tier flags), -1 when none
export const F_T1 = 5; // second holder entry, -1 when none (holders are packed: T0, T1, then extras)
export const F_HINT = 6; // most recently inserted child, -1: lets `match` follow a chain without a table lookup
export const F_EXTRA = 7; // number of further holders, kept in `extra`
export const FREE = -2;

/** Removes and returns one extra holder of `n`, or -1 when it has none. */
export function takeExtra(nd: Int32Array, extra: Map<number, number[]>, n: number): number {
  const b = n * STRIDE;
  if (nd[b + F_EXTRA] === 0) return -1;
  const list = extra.get(n)!;
  const e = list.pop()!;
  if (--nd[b + F_EXTRA]! === 0) extra.delete(n);
  return e;
}

/** Adds tiers `flags` of holder `id` to node `n`. Returns true when `id` did not hold it before. */
export function addHolder(nd: Int32Array, extra: Map<number, number[]>, n: number, id: number, flags: number): boolean {
  const b = n * STRIDE;
  for (let f = F_T0; f <= F_T1; f++) {
    const e = nd[b + f]!;
    if (e === -1) {
      nd[b + f] = (id << 2) | flags;
      return true;
    }
    if (e >>> 2 === id) {
      nd[b + f] = e | flags;
      return false;
    }
  }
  if (nd[b + F_EXTRA]! > 0) {
    const list = extra.get(n)!;
    for (let k = 0; k < list.length; k++) {
      if (list[k]! >>> 2 === id) {
        list[k] = list[k]! | flags;
        return false;
      }
    }
    list.push((id << 2) | flags);
  } else extra.set(n, [(id << 2) | flags]);
  nd[b + F_EXTRA]!++;
  return true;
}

/**
 * Clears `mask` tiers of holder `id` on `node`. Returns the tiers it still
 * holds there, 0 if it no longer holds the block (entry removed), -1 if it never did.
 */
export function dropHolder(
  nd: Int32Array,
  extra: Map<number, number[]>,
  node: number,
  id: number,
  mask: number,
): number {
  const b = node * STRIDE;
  let at: number; // F_T0, F_T1, or -1 for the extras
  if (nd[b + F_T0] !== -1 && nd[b + F_T0]! >>> 2 === id) at = F_T0;
  else if (nd[b + F_T1] !== -1 && nd[b + F_T1]! >>> 2 === id) at = F_T1;
  else at = -1;
  if (at >= 0) {
    const rest = nd[b + at]! & 3 & ~mask;
    if (rest !== 0) {
      nd[b + at] = (id << 2) | rest;
      return rest;
    }
    if (at === F_T0) nd[b + F_T0] = nd[b + F_T1]!;
    nd[b + F_T1] = takeExtra(nd, extra, node);
  } else {
    if (nd[b + F_EXTRA] === 0) return -1;
    const list = extra.get(node)!;
    const k = list.findIndex((e) => e >>> 2 === id);
    if (k < 0) return -1;
    const rest = list[k]! & 3 & ~mask;
    if (rest !== 0) {
      list[k] = (id << 2) | rest;
      return rest;
    }
    list[k] = list[list.length - 1]!;
    list.pop();
    if (--nd[b + F_EXTRA]! === 0) extra.delete(node);
  }
  return 0;
}
