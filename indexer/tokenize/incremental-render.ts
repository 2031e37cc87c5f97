import * as jinja from '@huggingface/jinja';
import { LRUCache } from 'lru-cache';
import { planOf, type Node, type Plan } from './template-plan.js';

/**
 * Renders a chat template so that a turn which extends a conversation costs
 * only its new messages. Chat templates are one loop over `messages` between a
 * head (system prompt, tools, namespace set-up) and a tail (generation
 * prompt); the head and tail are cheap and run every time, and each pass of
 * the loop is cached under everything it can read: the message, its loop
 * position, the neighbours it looks at, and the values of every other variable
 * its body reads (namespaces the head computed, request options).
 *
 * Exactness is decided from the template's syntax when it is loaded: the loop
 * body may not write namespaces, carry a variable from one pass to the next,
 * define or call macros, break, or read `messages` other than by a fixed or
 * loop-relative index. A template that does any of that is rendered whole, as
 * before (`IncrementalRenderer.for` returns undefined).
 */

interface RuntimeValue {
  type: string;
  value: unknown;
}

// The library's declarations for its runtime do not resolve under NodeNext, so what we use is typed here.
interface Environment {
  set(name: string, value: unknown): unknown;
  setVariable(name: string, value: unknown): unknown;
  lookupVariable(name: string): RuntimeValue;
}
interface InterpreterLike {
  global: Environment;
  evaluate(node: unknown, env: Environment): unknown;
  evaluateBlock(statements: Node[], env: Environment): { value: string };
}
const lib = jinja as unknown as {
  Environment: new (parent?: Environment) => Environment;
  Interpreter: new (env: Environment) => InterpreterLike;
  Template: new (source: string) => { render(items?: Record<string, unknown>): string };
};
const Environment = lib.Environment;

const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;
const ENTRY_OVERHEAD = 96;
// Set by the library on every render; a request variable with one of these names makes the whole render throw.
const GLOBAL_NAMES = new Set(['false', 'true', 'none', 'raise_exception', 'range', 'strftime_now', 'True', 'False']);
GLOBAL_NAMES.add('None').add('namespace');

/** The library's own global environment (namespace, range, raise_exception, ...), taken from one empty render. */
const GLOBALS: Environment = (() => {
  const proto = lib.Interpreter.prototype as unknown as { run: (this: InterpreterLike, program: unknown) => unknown };
  const run = proto.run;
  let captured: Environment | undefined;
  proto.run = function (this: InterpreterLike, program: unknown) {
    captured = this.global;
    return run.call(this, program);
  };
  try {
    new lib.Template('').render();
  } finally {
    proto.run = run;
  }
  if (!captured) throw new Error('@huggingface/jinja: could not take its global environment');
  return captured;
})();

interface Variant {
  outcomes: [Node, boolean][];
  text: string;
}
// Variants kept per pass key; more than a few means the tracked conditions keep changing.
const MAX_VARIANTS = 4;

/** The library's interpreter, noting the outcome of the tracked conditions it evaluates. */
class RecordingInterpreter extends lib.Interpreter {
  tracked: Set<Node> = new Set();
  outcomes: [Node, boolean][] | undefined;

  override evaluate(statement: unknown, environment: Environment): unknown {
    const value = super.evaluate(statement, environment);
    if (this.outcomes && this.tracked.has(statement as Node)) {
      const node = statement as Node;
      if (!this.outcomes.some(([n]) => n === node)) this.outcomes.push([node, truthy(value)]);
    }
    return value;
  }
}

function truthy(value: unknown): boolean {
  return (value as { __bool__(): { value: boolean } }).__bool__().value;
}

export class IncrementalRenderer {
  readonly #plan: Plan;
  readonly #passes: LRUCache<string, Variant[]>;
  #hits = 0;
  #misses = 0;

  private constructor(plan: Plan, cacheBytes: number) {
    this.#plan = plan;
    this.#passes = new LRUCache<string, Variant[]>({
      maxSize: cacheBytes,
      sizeCalculation: (variants, key) =>
        key.length * 2 + variants.reduce((a, v) => a + v.text.length * 2 + ENTRY_OVERHEAD, ENTRY_OVERHEAD),
    });
  }

  /** A renderer for this parsed template, or undefined when its loop cannot be rendered pass by pass exactly. */
  static for(parsed: unknown, cacheBytes = DEFAULT_CACHE_BYTES): IncrementalRenderer | undefined {
    const plan = planOf((parsed as { body: Node[] }).body);
    return plan ? new IncrementalRenderer(plan, cacheBytes) : undefined;
  }

  clear(): void {
    this.#passes.clear();
  }

  /** Loop passes served from the cache and rendered. */
  stats(): { hits: number; misses: number; entries: number } {
    return { hits: this.#hits, misses: this.#misses, entries: this.#passes.size };
  }

  /** Equal to `Template.render(items)`; undefined when these items need the whole render (it will throw the same way). */
  render(items: Record<string, unknown>): string | undefined {
    for (const key of Object.keys(items)) if (GLOBAL_NAMES.has(key)) return undefined;
    const p = this.#plan;
    const env = new Environment(GLOBALS);
    for (const [key, value] of Object.entries(items)) env.set(key, value);
    const recorder = new RecordingInterpreter(env);
    recorder.tracked = p.tracked;
    const interpreter = recorder;
    const messages = env.lookupVariable('messages');
    if (messages.type !== 'ArrayValue') return undefined;
    const list = messages.value as RuntimeValue[];
    const n = list.length;
    let out = interpreter.evaluateBlock(p.head, env).value;
    let shared = p.free.map((name) => valueKey(env.lookupVariable(name))).join('\u0001');
    for (const k of p.fixed) shared += `\u0002${k}:${k < n ? valueKey(list[k]) : '-'}`;
    if (p.readsLength) shared += `\u0002n${n}`;
    for (let i = 0; i < n; i++) {
      let key = `${shared}\u0003${i}${i === 0 ? 'f' : ''}${i === n - 1 ? 'l' : ''}`;
      for (const [offset, roleOnly] of p.neighbours) {
        const j = i + offset;
        const m = j >= 0 && j < n ? list[j] : undefined;
        key += `\u0004${offset}:${m === undefined ? '-' : roleOnly ? valueKey(member(m, 'role')) : valueKey(m)}`;
      }
      key += `\u0005${valueKey(list[i])}`;
      let scope: Environment | undefined;
      const passScope = () => {
        if (scope) return scope;
        scope = new Environment(env);
        scope.set('loop', {
          index: i + 1,
          index0: i,
          revindex: n - i,
          revindex0: n - i - 1,
          first: i === 0,
          last: i === n - 1,
          length: n,
        });
        scope.setVariable(p.loopVar, list[i]);
        return scope;
      };
      const variants = this.#passes.get(key);
      let text = variants?.find((v) =>
        v.outcomes.every(([node, outcome]) => truthy(recorder.evaluate(node, passScope())) === outcome),
      )?.text;
      if (text !== undefined) this.#hits += 1;
      else {
        this.#misses += 1;
        recorder.outcomes = [];
        text = interpreter.evaluateBlock(p.body, passScope()).value;
        const variant = { outcomes: recorder.outcomes, text };
        recorder.outcomes = undefined;
        this.#passes.set(key, [variant, ...(variants ?? [])].slice(0, MAX_VARIANTS));
      }
      out += text;
    }
    return out + interpreter.evaluateBlock(p.tail, env).value;
  }
}

function member(value: RuntimeValue, name: string): RuntimeValue | undefined {
  return value.type === 'ObjectValue' ? (value.value as Map<string, RuntimeValue>).get(name) : undefined;
}

/** An exact, injective text for a runtime value (types kept apart: "1" is not 1, undefined is not null). */
function valueKey(v: RuntimeValue | undefined): string {
  if (v === undefined) return 'u';
  switch (v.type) {
    case 'StringValue':
      // Length-prefixed rather than escaped: as exact, and no pass over the text.
      return `s${(v.value as string).length}:${v.value as string}`;
    case 'IntegerValue':
    case 'FloatValue':
    case 'BooleanValue':
      return `${v.type[0]}${String(v.value)}`;
    case 'NullValue':
      return 'n';
    case 'UndefinedValue':
      return 'u';
    case 'ArrayValue':
    case 'TupleValue':
      return `${v.type[0]}[${(v.value as RuntimeValue[]).map(valueKey).join(',')}]`;
    case 'ObjectValue':
    case 'NamespaceValue':
    case 'KeywordArgumentsValue': {
      let s = `${v.type[0]}{`;
      for (const [k, x] of v.value as Map<string, RuntimeValue>) s += `${k.length}:${k}=${valueKey(x)},`;
      return `${s}}`;
    }
    default:
      // Functions: the library's globals and our pure strip helpers (macros are refused by the planner).
      return v.type;
  }
}
