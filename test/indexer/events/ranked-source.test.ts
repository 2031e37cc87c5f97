import t from 'tap';
import { KvEventPublisher } from '../../../bench/sim/kv-publisher.js';
import { createEventSource, eventSourceConfigSchema } from '../../../indexer/events/create-source.js';
import { offsetPort, RankedEventSource } from '../../../indexer/events/ranked-source.js';
import { RecordingSink, storedEvent } from '../../fixtures/wire/recording-sink.js';

class RankSink extends RecordingSink {
  readonly rankResets: (number | null | undefined)[] = [];
  override reset(reason: string, rank?: number | null): void {
    super.reset(reason);
    this.rankResets.push(rank);
  }
}

t.test('one subscription per data-parallel rank, each with its own replay; a gap resets only its rank', async (t) => {
  const pubs = await Promise.all(
    [0, 1].map((rank) =>
      KvEventPublisher.open({
        endpoint: 'tcp://127.0.0.1:*',
        replayEndpoint: 'tcp://127.0.0.1:*',
        dataParallelRank: 0, // a publisher that does not stamp its rank: the subscription says which
      }).then((p) => {
        t.teardown(() => p.close());
        return { p, rank };
      }),
    ),
  );
  const source = createEventSource(
    {
      endpoint: pubs[0]!.p.endpoint,
      ranks: pubs.map(({ p }) => ({ endpoint: p.endpoint, replayEndpoint: p.replayEndpoint })),
      probeIntervalMs: 0,
    },
    'dp',
  );
  t.ok(source instanceof RankedEventSource);
  t.teardown(() => source.stop());
  const sink = new RankSink();
  await source.start(sink);
  let n = 0;
  const timer = setInterval(() => pubs.forEach(({ p }) => p.publish([storedEvent(n++)])), 20);
  await sink
    .until(() => new Set(sink.batches.map((b) => b.dataParallelRank)).size === 2, 'both ranks')
    .finally(() => clearInterval(timer));
  // Rank 1 loses two batches: replayed from rank 1's own replay socket, nothing reset.
  pubs[1]!.p.dropNext(2);
  for (let i = 0; i < 4; i++) pubs[1]!.p.publish([storedEvent(10_000 + i)]);
  const last1 = pubs[1]!.p.nextSeq - 1n;
  await sink.until(() => sink.batches.some((b) => b.dataParallelRank === 1 && b.seq === last1), 'rank 1 caught up');
  const s = (source as RankedEventSource).stats();
  t.equal(s.ranks.length, 2);
  t.equal(s.ranks[1]!.gaps, 1);
  t.ok(s.ranks[1]!.batchesReplayed >= 2);
  t.equal(s.gaps, 1, 'summed over ranks');
  t.strictSame(sink.resets, []);
  const rank1 = sink.batches.filter((b) => b.dataParallelRank === 1).map((b) => b.seq);
  t.strictSame(
    rank1,
    [...rank1].sort((a, b) => (a < b ? -1 : 1)),
    "rank 1's batches in its own order",
  );
});

t.test(
  'dataParallelSize follows vLLM: publish and replay ports offset by the rank; overlapping ranges are refused',
  async (t) => {
    t.equal(offsetPort('tcp://10.0.0.1:5557', 3), 'tcp://10.0.0.1:5560');
    const ok = createEventSource(
      { endpoint: 'tcp://127.0.0.1:5557', replayEndpoint: 'tcp://127.0.0.1:5657', dataParallelSize: 4 },
      'w',
    );
    t.ok(ok instanceof RankedEventSource);
    t.equal(ok.stats().endpoint, 'tcp://127.0.0.1:5557 tcp://127.0.0.1:5558 tcp://127.0.0.1:5559 tcp://127.0.0.1:5560');
    t.throws(
      () =>
        eventSourceConfigSchema.parse({
          endpoint: 'tcp://h:5557',
          replayEndpoint: 'tcp://h:5558',
          dataParallelSize: 2,
        }),
      /overlap/,
    );
    t.throws(
      () =>
        eventSourceConfigSchema.parse({
          endpoint: 'tcp://h:5557',
          dataParallelSize: 2,
          ranks: [{ endpoint: 'tcp://h:1' }],
        }),
      /not both/,
    );
  },
);
