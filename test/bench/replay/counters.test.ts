import t from 'tap';
import { sumCounters } from '../../../bench/replay/run.js';

t.test("sumCounters adds a metric's series over their labels and ignores the rest", (t) => {
  const text = [
    '# HELP kvgate_kv_event_restarts_total Engine restarts noticed',
    '# TYPE kvgate_kv_event_restarts_total counter',
    'kvgate_kv_event_restarts_total{worker="a"} 2',
    'kvgate_kv_event_restarts_total{worker="b"} 3',
    'kvgate_predicted_cached_tokens_sum{strategy="kv"} 1.5e+3',
    'kvgate_predicted_cached_tokens_sum_extra 99',
    'kvgate_kv_indexed_blocks 7',
    '',
  ].join('\n');
  t.strictSame(
    sumCounters(text, [
      'kvgate_kv_event_restarts_total',
      'kvgate_predicted_cached_tokens_sum',
      'kvgate_kv_indexed_blocks',
    ]),
    { kvgate_kv_event_restarts_total: 5, kvgate_predicted_cached_tokens_sum: 1500, kvgate_kv_indexed_blocks: 7 },
  );
  t.strictSame(sumCounters(text, ['kvgate_absent_total']), {});
  t.end();
});
