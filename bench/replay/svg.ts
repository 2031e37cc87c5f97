import type { ReplayReport } from './report.js';

/** Hand-written SVG (no plotting dependency): a TTFT CDF per strategy, and hit rate against the bound. */

const COLOURS = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf',
];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const f1 = (x: number) => x.toFixed(1);

export interface Series {
  name: string;
  /** Values at percentiles 0..100. */
  quantiles: readonly number[];
}

/** Log-x CDF panel at (x, y) of size w × h. */
export function cdfPanel(series: readonly Series[], x: number, y: number, w: number, h: number, title: string): string {
  const all = series.flatMap((s) => s.quantiles).filter((v) => Number.isFinite(v) && v > 0);
  if (all.length === 0) return `<text x="${x}" y="${y + 20}">no data</text>`;
  const lo = Math.floor(Math.log10(Math.min(...all)));
  const hi = Math.ceil(Math.log10(Math.max(...all)));
  const span = Math.max(1, hi - lo);
  const px = (v: number) => x + ((Math.log10(Math.max(v, 10 ** lo)) - lo) / span) * w;
  const py = (p: number) => y + h - p * h;
  const out: string[] = [
    `<text x="${x + w / 2}" y="${y - 10}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
  ];
  for (let e = lo; e <= hi; e++) {
    out.push(`<line x1="${f1(px(10 ** e))}" y1="${y}" x2="${f1(px(10 ** e))}" y2="${y + h}" stroke="#ddd"/>`);
    out.push(
      `<text x="${f1(px(10 ** e))}" y="${y + h + 16}" text-anchor="middle" font-size="11">${10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)} s</text>`,
    );
  }
  for (const p of [0, 0.25, 0.5, 0.75, 0.9, 1]) {
    out.push(`<line x1="${x}" y1="${f1(py(p))}" x2="${x + w}" y2="${f1(py(p))}" stroke="#eee"/>`);
    out.push(`<text x="${x - 6}" y="${f1(py(p) + 4)}" text-anchor="end" font-size="11">${p * 100}%</text>`);
  }
  out.push(`<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="none" stroke="#999"/>`);
  series.forEach((s, i) => {
    const pts = s.quantiles
      .map((v, k) => (Number.isFinite(v) ? `${f1(px(v))},${f1(py(k / 100))}` : ''))
      .filter(Boolean)
      .join(' ');
    const c = COLOURS[i % COLOURS.length];
    out.push(`<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="2"/>`);
    out.push(
      `<rect x="${x + w + 14}" y="${y + i * 18}" width="12" height="12" fill="${c}"/><text x="${x + w + 32}" y="${y + i * 18 + 10}" font-size="12">${esc(s.name)}</text>`,
    );
  });
  out.push(
    `<text x="${x + w / 2}" y="${y + h + 34}" text-anchor="middle" font-size="12">time to first token (simulated s, log scale)</text>`,
  );
  return out.join('\n');
}

export interface Bar {
  name: string;
  value: number;
  label: string;
}

/** Horizontal bars in [0, max] with an optional reference line (the bound). */
export function barPanel(
  bars: readonly Bar[],
  x: number,
  y: number,
  w: number,
  title: string,
  max: number,
  ref?: { value: number; label: string },
): string {
  const row = 20;
  const px = (v: number) => x + (Math.min(v, max) / max) * w;
  const out: string[] = [
    `<text x="${x + w / 2}" y="${y - 10}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
  ];
  bars.forEach((b, i) => {
    const top = y + i * row;
    out.push(`<text x="${x - 6}" y="${top + 13}" text-anchor="end" font-size="12">${esc(b.name)}</text>`);
    out.push(
      `<rect x="${x}" y="${top + 2}" width="${f1(px(b.value) - x)}" height="${row - 6}" fill="${COLOURS[i % COLOURS.length]}"/>`,
    );
    out.push(`<text x="${f1(px(b.value) + 4)}" y="${top + 13}" font-size="11">${esc(b.label)}</text>`);
  });
  const bottom = y + bars.length * row;
  out.push(`<line x1="${x}" y1="${y}" x2="${x}" y2="${bottom}" stroke="#999"/>`);
  if (ref) {
    out.push(
      `<line x1="${f1(px(ref.value))}" y1="${y - 4}" x2="${f1(px(ref.value))}" y2="${bottom + 4}" stroke="#000" stroke-dasharray="4 3"/>`,
    );
    out.push(
      `<text x="${f1(px(ref.value))}" y="${bottom + 18}" text-anchor="middle" font-size="11">${esc(ref.label)}</text>`,
    );
  }
  return out.join('\n');
}

export function svgDocument(width: number, height: number, body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#fff"/>
${body}
</svg>
`;
}

export function replaySvg(r: ReplayReport): string {
  const s = r.summaries;
  const cdf = cdfPanel(
    s.map((x) => ({ name: `${x.strategy} (mean ${x.ttft.mean.toFixed(2)} s)`, quantiles: x.ttftQuantiles })),
    70,
    50,
    520,
    300,
    'TTFT distribution (CDF)',
  );
  const max = Math.max(r.bound.tokenRate, ...s.map((x) => x.hitRate)) * 1.15 || 1;
  const bars = barPanel(
    s.map((x) => ({
      name: x.strategy,
      value: x.hitRate,
      label: `${(x.hitRate * 100).toFixed(1)}% (${(x.ofUpperBound * 100).toFixed(0)}% of bound)`,
    })),
    150,
    440,
    480,
    'Prefix-cache hit rate (tokens) vs. infinite shared cache',
    max,
    { value: r.bound.tokenRate, label: `bound ${(r.bound.tokenRate * 100).toFixed(1)}%` },
  );
  const height = 440 + s.length * 20 + 50;
  return svgDocument(
    900,
    height,
    `<text x="20" y="22" font-size="15" font-weight="bold">${esc(`Replay of ${r.trace.split('/').pop()}: ${r.traceShape.requests} requests, ${r.fleet.workers} workers, speed-up ${r.fleet.speedup}`)}</text>\n${cdf}\n${bars}`,
  );
}

export interface Line {
  name: string;
  points: readonly (readonly [number, number])[];
}

/** Lines over a categorical x axis (the grid's values, evenly spaced), y from 0. */
export function linePanel(
  lines: readonly Line[],
  xs: readonly number[],
  x: number,
  y: number,
  w: number,
  h: number,
  title: string,
  xLabel: string,
  yFormat: (v: number) => string,
): string {
  const all = lines.flatMap((l) => l.points.map((p) => p[1])).filter(Number.isFinite);
  const max = Math.max(...all, 0) * 1.1 || 1;
  const px = (v: number) => x + (xs.length > 1 ? (xs.indexOf(v) / (xs.length - 1)) * w : w / 2);
  const py = (v: number) => y + h - (v / max) * h;
  const out: string[] = [
    `<text x="${x + w / 2}" y="${y - 10}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
  ];
  out.push(`<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="none" stroke="#999"/>`);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    out.push(
      `<line x1="${x}" y1="${f1(py(v))}" x2="${x + w}" y2="${f1(py(v))}" stroke="#eee"/><text x="${x - 6}" y="${f1(py(v) + 4)}" text-anchor="end" font-size="11">${esc(yFormat(v))}</text>`,
    );
  }
  for (const v of xs)
    out.push(`<text x="${f1(px(v))}" y="${y + h + 16}" text-anchor="middle" font-size="11">${v}</text>`);
  out.push(`<text x="${x + w / 2}" y="${y + h + 34}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`);
  lines.forEach((l, i) => {
    const c = COLOURS[i % COLOURS.length];
    const pts = l.points.filter((p) => Number.isFinite(p[1]));
    out.push(
      `<polyline points="${pts.map((p) => `${f1(px(p[0]))},${f1(py(p[1]))}`).join(' ')}" fill="none" stroke="${c}" stroke-width="2"/>`,
    );
    for (const p of pts) out.push(`<circle cx="${f1(px(p[0]))}" cy="${f1(py(p[1]))}" r="3" fill="${c}"/>`);
    out.push(
      `<rect x="${x + w + 14}" y="${y + i * 18}" width="12" height="12" fill="${c}"/><text x="${x + w + 32}" y="${y + i * 18 + 10}" font-size="12">${esc(l.name)}</text>`,
    );
  });
  return out.join('\n');
}
