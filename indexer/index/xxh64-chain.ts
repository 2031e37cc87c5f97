import xxhash from 'xxhash-wasm';

/**
 * Chained xxh64 over a whole prompt in one call into WebAssembly.
 *
 * `xxhash-wasm` hashes one buffer per call: per block that is a copy into its
 * memory, a BigInt seed in, a BigInt result out and a BigInt mask, ~120 ns
 * of a 16-token block's hash. Here a 60-byte module of our own loops over the
 * blocks inside WebAssembly, calling the library's own xxh64 function
 * (imported, so the hash is the library's, bit for bit) with i64 values that
 * never cross into JavaScript: the tokens are written once, the chain runs in
 * one call, and the hashes are read back from memory.
 *
 * The library's module is instantiated a second time, privately: its memory
 * may then grow for long prompts without detaching the views the library's own
 * instance keeps.
 *
 * Memory layout per call: 8 spare bytes, then the tokens as u32 LE, then the
 * output hashes as u64. Block b is hashed in place: its parent hash is written
 * over the 8 bytes before its tokens (the previous block's last two tokens,
 * already hashed), so `parent || tokens` is contiguous without copying.
 */

// (module
//   (import "x" "mem" (memory 1))
//   (import "x" "h" (func $h (param i32 i32 i64) (result i64)))
//   (func (export "chain") (param $tok i32) (param $n i32) (param $bytes i32)
//         (param $seed i64) (param $prev i64) (param $out i32) (local $at i32)
//     (block (loop
//       (br_if 1 (i32.eqz (local.get $n)))
//       (i64.store (local.tee $at (i32.sub (local.get $tok) (i32.const 8))) (local.get $prev))
//       (local.set $prev (call $h (local.get $at) (i32.add (local.get $bytes) (i32.const 8)) (local.get $seed)))
//       (i64.store (local.get $out) (local.get $prev))
//       (local.set $out (i32.add (local.get $out) (i32.const 8)))
//       (local.set $tok (i32.add (local.get $tok) (local.get $bytes)))
//       (local.set $n (i32.sub (local.get $n) (i32.const 1)))
//       (br 0)))))
const CODE = [
  0x01, 0x01, 0x7f, // one i32 local
  0x02, 0x40, 0x03, 0x40,
  0x20, 0x01, 0x45, 0x0d, 0x01,
  0x20, 0x00, 0x41, 0x08, 0x6b, 0x22, 0x06, 0x20, 0x04, 0x37, 0x03, 0x00,
  0x20, 0x06, 0x20, 0x02, 0x41, 0x08, 0x6a, 0x20, 0x03, 0x10, 0x00, 0x21, 0x04,
  0x20, 0x05, 0x20, 0x04, 0x37, 0x03, 0x00,
  0x20, 0x05, 0x41, 0x08, 0x6a, 0x21, 0x05,
  0x20, 0x00, 0x20, 0x02, 0x6a, 0x21, 0x00,
  0x20, 0x01, 0x41, 0x01, 0x6b, 0x21, 0x01,
  0x0c, 0x00, 0x0b, 0x0b, 0x0b,
]; // prettier-ignore

const section = (id: number, body: number[]) => [id, body.length, ...body];
const MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  ...section(1, [0x02, 0x60, 0x03, 0x7f, 0x7f, 0x7e, 0x01, 0x7e, 0x60, 0x06, 0x7f, 0x7f, 0x7f, 0x7e, 0x7e, 0x7f, 0x00]),
  ...section(2, [0x02, 0x01, 0x78, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x01, 0x01, 0x78, 0x01, 0x68, 0x00, 0x00]),
  ...section(3, [0x01, 0x01]),
  ...section(7, [0x01, 0x05, 0x63, 0x68, 0x61, 0x69, 0x6e, 0x00, 0x01]),
  ...section(10, [0x01, CODE.length, ...CODE]),
]); // prettier-ignore

// Node's types here carry no WebAssembly declarations (no DOM lib); what we use is typed here.
interface WasmMemory {
  buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface Wasm {
  instantiate: (bytes: Uint8Array, imports?: object) => Promise<{ instance: { exports: Record<string, unknown> } }>;
}
const wasm = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

interface LibraryExports {
  mem: WasmMemory;
  xxh64: (ptr: number, len: number, seed: bigint) => bigint;
}

/** The library's wasm bytes, taken as it instantiates them (it does not export them). */
async function libraryModuleBytes(): Promise<Uint8Array> {
  const instantiate = wasm.instantiate;
  let bytes: Uint8Array | undefined;
  wasm.instantiate = (source, imports) => {
    bytes ??= source;
    return instantiate.call(wasm, source, imports);
  };
  try {
    await xxhash();
  } finally {
    wasm.instantiate = instantiate;
  }
  if (!bytes) throw new Error('xxhash-wasm: could not read its module');
  return bytes;
}

export type ChainHasher = (
  tokens: ArrayLike<number>,
  blockSize: number,
  blocks: number,
  seed: bigint,
  parent: bigint,
) => bigint[];

export async function createChainHasher(): Promise<ChainHasher> {
  const lib = (await wasm.instantiate(await libraryModuleBytes())).instance.exports as unknown as LibraryExports;
  const chain = (await wasm.instantiate(MODULE, { x: { mem: lib.mem, h: lib.xxh64 } })).instance.exports.chain as (
    tok: number,
    n: number,
    bytes: number,
    seed: bigint,
    prev: bigint,
    out: number,
  ) => void;
  const mem = lib.mem;
  // The library's own instance never sees this memory, so only our views need refreshing when it grows.
  let words = new Uint32Array(mem.buffer);
  const TOKENS_AT = 16;
  return (tokens, blockSize, blocks, seed, parent) => {
    const tokenCount = blocks * blockSize;
    const outAt = TOKENS_AT + ((tokenCount * 4 + 7) & ~7);
    const needed = outAt + blocks * 8;
    if (needed > mem.buffer.byteLength) mem.grow(Math.ceil((needed - mem.buffer.byteLength) / 65536));
    if (words.buffer !== mem.buffer) words = new Uint32Array(mem.buffer);
    // Token ids become u32 (a negative id would wrap; engines never send one).
    for (let i = 0, w = TOKENS_AT >> 2; i < tokenCount; i++, w++) words[w] = tokens[i]!;
    chain(TOKENS_AT, blocks, blockSize * 4, seed, parent, outAt);
    const hashes = new BigUint64Array(mem.buffer, outAt, blocks);
    const out = new Array<bigint>(blocks);
    for (let b = 0; b < blocks; b++) out[b] = hashes[b]!;
    return out;
  };
}
