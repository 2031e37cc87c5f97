import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { collectDefaultMetrics, Registry } from 'prom-client';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: { expr: string }[];
  datasource?: unknown;
}

/** Every `'kvgate_...'` metric name literal in the gateway's and indexer's sources. */
function sourceMetricNames(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string) => {
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.endsWith('.ts'))
        for (const m of readFileSync(p, 'utf8').matchAll(/['"`](kvgate_[a-z0-9_]+)['"`]/g)) names.add(m[1]!);
    }
  };
  walk(join(ROOT, 'gateway'));
  walk(join(ROOT, 'indexer'));
  return names;
}

/** Process and Node.js metrics: prom-client's defaults, registered by `GatewayMetrics` with the kvgate_ prefix. */
async function defaultMetricNames(): Promise<Set<string>> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'kvgate_' });
  const names = new Set((await registry.getMetricsAsJSON()).map((m) => m.name));
  registry.clear();
  return names;
}

t.test('the Grafana dashboard parses and queries only metrics the gateway exports', async (t) => {
  const metricsSource = readFileSync(join(ROOT, 'gateway/ops/metrics.ts'), 'utf8');
  t.match(
    metricsSource,
    /collectDefaultMetrics\(\{[^}]*prefix: 'kvgate_'/,
    'the gateway registers the default metrics with the kvgate_ prefix',
  );
  const known = new Set([...sourceMetricNames(), ...(await defaultMetricNames())]);
  t.ok(known.has('kvgate_requests_total') && known.has('kvgate_kv_indexed_blocks'), 'the metric sources were found');

  const dash = JSON.parse(readFileSync(join(ROOT, 'docker/grafana-dashboard.json'), 'utf8')) as {
    title: string;
    uid: string;
    panels: Panel[];
    templating: { list: { name: string; type: string }[] };
  };
  t.equal(dash.uid, 'kvgate-gateway');
  t.ok(
    dash.templating.list.some((v) => v.type === 'datasource' && v.name === 'datasource'),
    'a Prometheus datasource variable',
  );
  const queried = new Set<string>();
  const ids = new Set<number>();
  for (const p of dash.panels) {
    t.notOk(ids.has(p.id), `panel id ${p.id} is unique`);
    ids.add(p.id);
    t.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title}: fits the 24-column grid`);
    if (p.type === 'row') continue;
    t.ok((p.targets ?? []).length > 0, `${p.title}: has queries`);
    for (const target of p.targets ?? []) {
      for (const m of target.expr.matchAll(/\bkvgate_[a-z0-9_]+/g)) queried.add(m[0]);
    }
  }
  for (const name of queried) {
    // Histograms are queried through their _bucket, _sum and _count series.
    const base = name.replace(/_(bucket|sum|count)$/, '');
    t.ok(known.has(name) || known.has(base), `${name} is exported by the gateway`);
  }
  // What the dashboard is for: each of these must be on it.
  for (const wanted of [
    'kvgate_requests_total',
    'kvgate_time_to_first_token_seconds_bucket',
    'kvgate_request_duration_seconds_bucket',
    'kvgate_inflight_requests',
    'kvgate_inflight_prefill_tokens',
    'kvgate_worker_healthy',
    'kvgate_upstream_errors_total',
    'kvgate_kv_index_nodes',
    'kvgate_kv_indexed_blocks',
    'kvgate_kv_event_lag_seconds',
    'kvgate_kv_event_gaps_total',
    'kvgate_kv_event_resets_total',
    'kvgate_tokenize_seconds_bucket',
    'kvgate_predicted_cached_tokens_sum',
  ])
    t.ok(queried.has(wanted), `the dashboard shows ${wanted}`);
  // Panels must not overlap (Grafana would shuffle them).
  const cells = new Set<string>();
  for (const p of dash.panels) {
    for (let x = p.gridPos.x; x < p.gridPos.x + p.gridPos.w; x++) {
      for (let y = p.gridPos.y; y < p.gridPos.y + p.gridPos.h; y++) {
        const key = `${x},${y}`;
        if (cells.has(key)) t.fail(`${p.title} overlaps another panel at ${key}`);
        cells.add(key);
      }
    }
  }
});
