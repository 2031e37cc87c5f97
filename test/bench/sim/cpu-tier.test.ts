import t from 'tap';
import { CpuTier } from '../../../bench/sim/cpu-tier.js';
import type { KvEvent } from '../../../indexer/events/types.js';

const stored = (hashes: bigint[]): KvEvent => ({
  kind: 'stored',
  engineHashes: hashes,
  parentEngineHash: null,
  tokenIds: [],
  blockSize: 16,
  tier: 'gpu',
  loraName: null,
});

t.test('a pin sets the TTL: a longer one keeps blocks out of the LRU, a short one lets go', async (t) => {
  let clock = 0;
  const cpu = new CpuTier({
    numBlocks: 4,
    pcieGBps: 25,
    bytesPerToken: 1000,
    blockSize: 16,
    speedup: 1,
    now: () => clock,
  });
  cpu.withOffloads([stored([1n, 2n])]);
  t.equal(cpu.pin([1n, 2n], 60_000), 2);
  cpu.withOffloads([stored([3n, 4n, 5n, 6n])]);
  t.ok(cpu.has(1n) && cpu.has(2n), 'pinned blocks survive host pressure');
  t.equal(cpu.pin([1n, 2n], 1), 2, 'pinning again sets the shorter TTL');
  clock += 2;
  cpu.withOffloads([stored([7n, 8n, 9n, 10n])]);
  t.equal(cpu.stats.cpuPinnedBlocks, 0);
  t.notOk(cpu.has(1n) || cpu.has(2n), 'released blocks are evictable again');
});
