/**
 * Reads a chat template's syntax to decide whether its loop over `messages`
 * can be rendered one pass at a time, and what each pass reads (see
 * incremental-render.ts, which renders by this plan).
 */

export interface Node {
  type: string;
  [key: string]: unknown;
}

// The loop attributes a pass may read, and whether they depend on the length of the conversation.
const LOOP_ATTRS: Record<string, boolean> = {
  index: false,
  index0: false,
  first: false,
  last: false,
  length: true,
  revindex: true,
  revindex0: true,
};

/** What one pass of the main loop reads besides its own message. */
export interface Plan {
  head: Node[];
  body: Node[];
  tail: Node[];
  loopVar: string;
  /** Loop attributes read include the conversation length. */
  readsLength: boolean;
  /** Offsets from `loop.index0` of neighbours read, and whether only their role is read. */
  neighbours: Map<number, boolean>;
  /** Fixed indexes into `messages` read by the body. */
  fixed: Set<number>;
  /** Other variables read by the body, looked up after the head has run; their values key a pass. */
  free: string[];
  /**
   * Conditions of the pass's own scope that read variables only through the
   * message, the loop and the head's values (e.g. Qwen3's `loop.index0 >
   * ns.last_query_index`): a cached pass records their outcomes and is reused
   * when they come out the same, so a value that moves every turn does not
   * invalidate every pass.
   */
  tracked: Set<Node>;
}

export function planOf(program: Node[]): Plan | undefined {
  const loops = program.filter(
    (s) => s.type === 'For' && isIdent(s.iterable as Node, 'messages') && (s.loopvar as Node).type === 'Identifier',
  );
  // The last such loop is the conversation; any earlier one (e.g. computing a namespace) is part of the head.
  const loop = loops.at(-1);
  if (!loop) return undefined;
  if ((loop.defaultBlock as Node[] | undefined)?.length) return undefined;
  const at = program.indexOf(loop);
  const head = program.slice(0, at);
  if (containsType(head, 'Macro')) return undefined;
  const loopVar = (loop.loopvar as Node).value as string;
  const body = loop.body as Node[];
  const carried = new Set<string>();
  if (!collectSets(body, carried)) return undefined;
  const plan: Plan = {
    head,
    body,
    tail: program.slice(at + 1),
    loopVar,
    readsLength: false,
    neighbours: new Map(),
    fixed: new Set(),
    free: [],
    tracked: new Set(),
  };
  const reads = new Set<string>();
  if (!scanBlock(body, { plan, reads, carried, assigned: new Set([loopVar]), nested: false })) return undefined;
  if (reads.has('strftime_now')) return undefined;
  for (const name of [loopVar, 'loop', 'messages', ...carried]) reads.delete(name);
  plan.free = [...reads].sort();
  return plan;
}

/** Names the body sets at its own level (they would outlive one pass); false on namespace writes. */
function collectSets(block: Node[], out: Set<string>): boolean {
  for (const s of block) {
    if (s.type === 'Set') {
      const target = s.assignee as Node;
      if (target.type === 'Identifier') out.add(target.value as string);
      else if (target.type === 'TupleLiteral') for (const e of target.value as Node[]) out.add(e.value as string);
      else return false;
    } else if (s.type === 'If') {
      if (!collectSets(s.body as Node[], out) || !collectSets(s.alternate as Node[], out)) return false;
    } else if (s.type === 'For') {
      // A nested loop's sets stay in its own scope, but namespace writes there still leak.
      if (containsNamespaceWrite(s.body)) return false;
    }
  }
  return true;
}

interface Scan {
  plan: Plan;
  reads: Set<string>;
  carried: Set<string>;
  /** Names definitely set before this point of the current pass. */
  assigned: Set<string>;
  /** Inside a loop nested in the body, where `loop` is the inner loop. */
  nested: boolean;
}

function scanBlock(block: Node[], sc: Scan): boolean {
  for (const s of block) {
    switch (s.type) {
      case 'Comment':
        break;
      case 'Set': {
        if (s.value ? !scanExpr(s.value as Node, sc) : !scanBlock(s.body as Node[], sc)) return false;
        const target = s.assignee as Node;
        if (target.type === 'Identifier') sc.assigned.add(target.value as string);
        else if (target.type === 'TupleLiteral')
          for (const e of target.value as Node[]) sc.assigned.add(e.value as string);
        else return false;
        break;
      }
      case 'If': {
        if (!scanCondition(s.test as Node, sc)) return false;
        const a = { ...sc, assigned: new Set(sc.assigned) };
        const b = { ...sc, assigned: new Set(sc.assigned) };
        if (!scanBlock(s.body as Node[], a) || !scanBlock(s.alternate as Node[], b)) return false;
        for (const name of a.assigned) if (b.assigned.has(name)) sc.assigned.add(name);
        break;
      }
      case 'For': {
        const iterable = s.iterable as Node;
        const inner = { ...sc, assigned: new Set(sc.assigned), nested: true };
        const loopvar = s.loopvar as Node;
        if (loopvar.type === 'Identifier') inner.assigned.add(loopvar.value as string);
        else for (const e of loopvar.value as Node[]) inner.assigned.add(e.value as string);
        if (iterable.type === 'SelectExpression') {
          if (!scanExpr(iterable.lhs as Node, sc) || !scanExpr(iterable.test as Node, inner)) return false;
        } else if (!scanExpr(iterable, sc)) return false;
        inner.assigned.add('loop');
        if (!scanBlock(s.body as Node[], inner)) return false;
        if (!scanBlock((s.defaultBlock as Node[] | undefined) ?? [], { ...sc, assigned: new Set(sc.assigned) }))
          return false;
        break;
      }
      case 'Macro':
      case 'CallStatement':
      case 'FilterStatement':
      case 'Break':
      case 'Continue':
        return false;
      default:
        if (!scanExpr(s, sc)) return false;
    }
  }
  return true;
}

/** Records what an expression reads; false when it reads `messages`, `loop` or a carried variable in a way we cannot key. */
function scanExpr(e: Node | undefined, sc: Scan): boolean {
  if (!e || typeof e !== 'object') return true;
  switch (e.type) {
    case 'Identifier': {
      const name = e.value as string;
      if (name === 'messages') return false;
      if (name === 'loop' && !sc.nested) return false;
      if (sc.carried.has(name) && !sc.assigned.has(name)) return false;
      sc.reads.add(name);
      return true;
    }
    case 'MemberExpression': {
      const object = e.object as Node;
      const property = e.property as Node;
      if (!e.computed && isIdent(object, 'loop') && !sc.nested) {
        const attr = property.value as string;
        if (!(attr in LOOP_ATTRS)) return false;
        if (LOOP_ATTRS[attr]) sc.plan.readsLength = true;
        return true;
      }
      if (e.computed && isIdent(object, 'messages')) return messageIndex(property, false, sc);
      if (!e.computed && property.value === 'role' && object.type === 'MemberExpression' && object.computed) {
        if (isIdent(object.object as Node, 'messages')) return messageIndex(object.property as Node, true, sc);
      }
      return scanExpr(object, sc) && (!e.computed || scanExpr(property, sc));
    }
    case 'FilterExpression': {
      const operand = e.operand as Node;
      const filter = e.filter as Node;
      if (isIdent(operand, 'messages') && isIdent(filter, 'length')) {
        sc.plan.readsLength = true;
        return true;
      }
      if (!scanExpr(operand, sc)) return false;
      return filter.type === 'CallExpression' ? scanList(filter.args as Node[], sc) : true;
    }
    case 'TestExpression':
      return scanExpr(e.operand as Node, sc);
    case 'CallExpression':
      return scanExpr(e.callee as Node, sc) && scanList(e.args as Node[], sc);
    case 'KeywordArgumentExpression':
      return scanExpr(e.value as Node, sc);
    case 'BinaryExpression':
      return scanExpr(e.left as Node, sc) && scanExpr(e.right as Node, sc);
    case 'UnaryExpression':
      return scanExpr(e.argument as Node, sc);
    case 'Ternary':
      return (
        scanCondition(e.condition as Node, sc) && scanExpr(e.trueExpr as Node, sc) && scanExpr(e.falseExpr as Node, sc)
      );
    case 'SliceExpression':
      return scanExpr(e.start as Node, sc) && scanExpr(e.stop as Node, sc) && scanExpr(e.step as Node, sc);
    case 'SpreadExpression':
    case 'KeywordSpreadExpression':
      return scanExpr(e.argument as Node, sc);
    case 'ArrayLiteral':
    case 'TupleLiteral':
      return scanList(e.value as Node[], sc);
    case 'ObjectLiteral': {
      if (!(e.value instanceof Map)) return false;
      for (const [k, v] of e.value as Map<Node, Node>) if (!scanExpr(k, sc) || !scanExpr(v, sc)) return false;
      return true;
    }
    case 'StringLiteral':
    case 'IntegerLiteral':
    case 'FloatLiteral':
      return true;
    default:
      return false;
  }
}

/** A condition in the pass's own scope that reads head values but no locals is tracked rather than keyed by value. */
function scanCondition(test: Node, sc: Scan): boolean {
  if (sc.nested) return scanExpr(test, sc);
  const own = new Set<string>();
  if (!scanExpr(test, { ...sc, reads: own })) return false;
  if (own.has('strftime_now')) return false;
  const outside = [...own].filter((name) => name !== 'loop' && name !== sc.plan.loopVar);
  if (outside.length > 0 && outside.every((name) => !sc.carried.has(name))) sc.plan.tracked.add(test);
  else for (const name of own) sc.reads.add(name);
  return true;
}

function scanList(list: Node[], sc: Scan): boolean {
  return list.every((x) => scanExpr(x, sc));
}

/** `messages[k]` or `messages[loop.index0 ± k]` in the main loop's own scope; anything else is refused. */
function messageIndex(index: Node, roleOnly: boolean, sc: Scan): boolean {
  if (index.type === 'IntegerLiteral') {
    sc.plan.fixed.add(index.value as number);
    return true;
  }
  if (sc.nested || index.type !== 'BinaryExpression') return false;
  const op = (index.operator as { value: string }).value;
  const left = index.left as Node;
  const right = index.right as Node;
  const isIndex0 =
    left.type === 'MemberExpression' &&
    !left.computed &&
    isIdent(left.object as Node, 'loop') &&
    (left.property as Node).value === 'index0';
  if (!isIndex0 || right.type !== 'IntegerLiteral' || (op !== '+' && op !== '-')) return false;
  const offset = (op === '+' ? 1 : -1) * (right.value as number);
  sc.plan.neighbours.set(offset, roleOnly && (sc.plan.neighbours.get(offset) ?? true));
  return true;
}

function isIdent(node: Node | undefined, name: string): boolean {
  return node?.type === 'Identifier' && node.value === name;
}

function containsType(node: unknown, type: string): boolean {
  if (!node || typeof node !== 'object') return false;
  if ((node as Node).type === type) return true;
  return Object.values(node).some((v) => containsType(v, type));
}

function containsNamespaceWrite(node: unknown): boolean {
  if (!node || typeof node !== 'object') return false;
  const n = node as Node;
  if (n.type === 'Set' && (n.assignee as Node).type === 'MemberExpression') return true;
  return Object.values(node).some((v) => containsNamespaceWrite(v));
}
