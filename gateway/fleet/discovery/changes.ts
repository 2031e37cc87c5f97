import type { Logger } from 'pino';
import type { DiscoveredWorker } from './discovery.js';
import { canonical } from './template.js';

export interface WorkerDiff {
  added: DiscoveredWorker[];
  removed: DiscoveredWorker[];
  /** Same id, something else changed (address, ports, role...): drain the old one and add the new. */
  changed: DiscoveredWorker[];
}

/** What changed between two lists emitted by a discovery source. */
export function diffWorkers(before: readonly DiscoveredWorker[], after: readonly DiscoveredWorker[]): WorkerDiff {
  const old = new Map(before.map((w) => [w.id, w]));
  const now = new Map(after.map((w) => [w.id, w]));
  const diff: WorkerDiff = { added: [], removed: [], changed: [] };
  for (const w of after) {
    const prev = old.get(w.id);
    if (prev === undefined) diff.added.push(w);
    else if (canonical([prev]) !== canonical([w])) diff.changed.push(w);
  }
  for (const w of before) if (!now.has(w.id)) diff.removed.push(w);
  return diff;
}

/**
 * Calls `onChange` only when the list differs from the last one emitted; the
 * sources share it so "emits only on change" means the same thing everywhere.
 */
export class ChangeEmitter {
  #last: string | undefined;
  #lastList: DiscoveredWorker[] = [];
  #onChange: ((workers: DiscoveredWorker[]) => void) | undefined;

  readonly #log: Logger | undefined;
  readonly #source: string;

  constructor(log: Logger | undefined, source: string) {
    this.#log = log;
    this.#source = source;
  }

  attach(onChange: (workers: DiscoveredWorker[]) => void): void {
    this.#onChange = onChange;
  }

  detach(): void {
    this.#onChange = undefined;
  }

  /** True when the list was new and handed on. */
  emit(workers: DiscoveredWorker[]): boolean {
    const key = canonical(workers);
    if (key === this.#last || this.#onChange === undefined) return false;
    const previous = this.#lastList;
    this.#last = key;
    this.#lastList = workers;
    if (this.#log !== undefined) {
      const d = diffWorkers(previous, workers);
      this.#log.info(
        {
          discovery: this.#source,
          workers: workers.length,
          added: d.added.map((w) => w.id),
          removed: d.removed.map((w) => w.id),
          changed: d.changed.map((w) => w.id),
        },
        'discovery changed',
      );
    }
    this.#onChange(workers);
    return true;
  }
}
