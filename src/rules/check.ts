/**
 * The checker: turns a parsed rule into one the compiler can take without second-guessing.
 * It enforces types (numbers vs addresses), that constants fit the fields they meet, that a
 * rule only writes writable fields and each of them once, that the hook can see every field;
 * it folds constant arithmetic, and it rewrites a few forms into ones the compiler knows
 * (`in` on addresses or on `either` fields becomes an `or` of tests).
 *
 * What the checker leaves to the compiler: a `set` on a layer the packet lacks does nothing
 * (the compiler guards each write with the layer's presence), so `set tcp.flags.push = 1`
 * needs no `tcp` in the match.
 */
import type { Action, CmpOp, Cond, Expr, FieldDef, Hook, Span } from './ast.js';
import { fieldCatalog, hookCannotSee } from './catalog.js';
import { RuleError } from './errors.js';
import { MAX_DELAY_NS } from './limits.js';
import type { ParsedRule } from './parser.js';

type ValueType = 'num' | 'ipv4' | 'ipv6' | 'mac';

type FaultAction = Extract<Action, { kind: 'duplicate' | 'corrupt' | 'truncate' | 'delay' | 'reorder' }>;

/** The longest `delay` (a packet held longer is surely a mistake): one of the limits of limits.ts. */
export { MAX_DELAY_NS };
/** The most later packets `reorder by N` lets overtake a held one. */
export const MAX_REORDER_BY = 1000;

/** Copies one `duplicate` may send (each a bpf_clone_redirect). */
export const MAX_DUPLICATES = 16;
/** Bits one `corrupt` may flip. */
export const MAX_CORRUPT_BITS = 64;
/** `truncate` keeps at least the Ethernet header, and at most an IP datagram's worth. */
export const MIN_TRUNCATE = 14;
export const MAX_TRUNCATE = 65535;

const TYPE_NAMES: Record<ValueType, string> = { num: 'a number', ipv4: 'an IPv4 address', ipv6: 'an IPv6 address', mac: 'a MAC address' };

const FALSE: Cond = { kind: 'not', arg: { kind: 'true' } };

export interface CheckedRule {
  match: Cond;
  actions: Action[];
}

/** Checks and normalizes one parsed rule for a hook. `source` is the text spans index. */
export function checkRule(parsed: ParsedRule, source: string, hook: Hook): CheckedRule {
  const c = new Checker(source, hook);
  return { match: c.cond(parsed.match), actions: c.actions(parsed.actions) };
}

/** Whether a condition was folded to a constant: true, false, or undefined when it depends on the packet. */
export function constantCond(c: Cond): boolean | undefined {
  if (c.kind === 'true') return true;
  if (c.kind === 'not' && c.arg.kind === 'true') return false;
  return undefined;
}

class Checker {
  constructor(private readonly source: string, private readonly hook: Hook) {}

  private fail(reason: string, span: Span, hint?: string): never {
    throw new RuleError(reason, this.source, span, { hint });
  }

  private text(span: Span): string {
    return this.source.slice(span.start, span.end);
  }

  // ------------------------------------------------------------ conditions

  cond(c: Cond): Cond {
    switch (c.kind) {
      case 'true':
        return c;
      case 'proto': {
        const why = hookCannotSee(c.layer, this.hook);
        if (why) this.fail(`"${c.layer}" cannot be tested here: ${why}`, c.span, 'match VLAN tags with --hook xdp');
        return c;
      }
      case 'truthy': {
        const { expr, type } = this.expr(c.expr, 'match');
        if (type !== 'num') {
          this.fail(`${this.text(c.span)} is ${TYPE_NAMES[type]}, not a test`, c.span, 'compare it: ip.src == 198.18.0.1; or test for the protocol alone: ip');
        }
        if (expr.kind === 'num') return expr.value !== 0 ? { kind: 'true' } : FALSE;
        return { kind: 'truthy', expr, span: c.span };
      }
      case 'cmp':
        return this.compare(c);
      case 'in':
        return this.membership(c);
      case 'and':
      case 'or': {
        const left = this.cond(c.left);
        const right = this.cond(c.right);
        const l = constantCond(left);
        const r = constantCond(right);
        if (c.kind === 'and') {
          if (l === false || r === false) return FALSE;
          if (l === true) return right;
          if (r === true) return left;
        } else {
          if (l === true || r === true) return { kind: 'true' };
          if (l === false) return right;
          if (r === false) return left;
        }
        return { kind: c.kind, left, right };
      }
      case 'not': {
        const arg = this.cond(c.arg);
        if (arg.kind === 'not') return arg.arg;
        return { kind: 'not', arg };
      }
    }
  }

  private compare(c: Extract<Cond, { kind: 'cmp' }>): Cond {
    const l = this.expr(c.left, 'match', true);
    const r = this.expr(c.right, 'match', true);
    const left = l.expr;
    const right = r.expr;
    if (l.type !== r.type) {
      // Name the field's type first: "ip.src is an IPv4 address, but 5 is a number".
      const fieldFirst = left.kind === 'field' || right.kind !== 'field';
      const [a, ta, b, tb] = fieldFirst ? [left, l.type, right, r.type] : [right, r.type, left, l.type];
      this.fail(`${this.text(a.span)} is ${TYPE_NAMES[ta]}, but ${this.text(b.span)} is ${TYPE_NAMES[tb]}`, b.span);
    }
    const isField = (e: Expr): e is Extract<Expr, { kind: 'field' }> => e.kind === 'field';
    for (const [self, other] of [[left, right], [right, left]] as const) {
      if (isField(self) && self.field.either && other.kind !== 'num' && other.kind !== 'addr') {
        this.fail(`${self.field.name} means ${self.field.either[0]} or ${self.field.either[1]}: compare it with a constant`, other.span, `or compare ${self.field.either[0]} and ${self.field.either[1]} separately`);
      }
    }
    if (l.type !== 'num') return this.compareAddresses(c.op, left, right, c.span);
    if (left.kind === 'num' && right.kind === 'num') return compareConstants(c.op, left.value, right.value) ? { kind: 'true' } : FALSE;
    if (c.op === '==' || c.op === '!=') {
      if (isField(left) && right.kind === 'num') this.mustFit(left.field, right, 'compare', c.op);
      if (isField(right) && left.kind === 'num') this.mustFit(right.field, left, 'compare', c.op);
    }
    return { kind: 'cmp', op: c.op, left, right, span: c.span };
  }

  private compareAddresses(op: CmpOp, left: Expr, right: Expr, span: Span): Cond {
    if (op !== '==' && op !== '!=') this.fail(`addresses compare only with == and !=, not ${op}`, span, 'for address ranges use a CIDR block: ip.dst == 198.18.0.0/15');
    const fieldSide = left.kind === 'field' ? left : right.kind === 'field' ? right : undefined;
    if (!fieldSide || fieldSide.kind !== 'field') this.fail('this compares two constant addresses; one side should be a field', span);
    const other = fieldSide === left ? right : left;
    const wide = fieldSide.field.width === 6 || fieldSide.field.width === 16;
    if (other.kind === 'field') {
      if (wide) this.fail(`${fieldSide.field.name} can be compared with an address, not with another field`, other.span);
      if (other.field.either) this.fail(`${other.field.name} means ${other.field.either.join(' or ')}: compare it with a constant`, other.span);
    }
    return { kind: 'cmp', op, left, right, span };
  }

  private membership(c: Extract<Cond, { kind: 'in' }>): Cond {
    const subject = this.expr(c.expr, 'match', true);
    const items: Array<{ lo: Expr; hi?: Expr }> = [];
    for (const item of c.items) {
      const lo = this.expr(item.lo, 'match');
      if (lo.type !== subject.type) {
        this.fail(`${this.text(item.lo.span)} is ${TYPE_NAMES[lo.type]}, but ${this.text(c.expr.span)} is ${TYPE_NAMES[subject.type]}`, item.lo.span);
      }
      if (item.hi === undefined) {
        if (subject.type !== 'num' && lo.expr.kind !== 'addr') this.fail('the items of an address set must be addresses or CIDR blocks', item.lo.span);
        if (subject.expr.kind === 'field' && lo.expr.kind === 'num') this.mustFit(subject.expr.field, lo.expr, 'item');
        items.push({ lo: lo.expr });
        continue;
      }
      if (subject.type !== 'num') this.fail('ranges work on numbers; for addresses use a CIDR block', { start: item.lo.span.start, end: item.hi.span.end });
      const hi = this.expr(item.hi, 'match');
      if (hi.type !== 'num') this.fail(`${this.text(item.hi.span)} is ${TYPE_NAMES[hi.type]}, not a number`, item.hi.span);
      if (lo.expr.kind === 'num' && hi.expr.kind === 'num' && lo.expr.value > hi.expr.value) {
        this.fail(`the range ${lo.expr.value}..${hi.expr.value} is empty: the low end comes first`, { start: item.lo.span.start, end: item.hi.span.end });
      }
      items.push({ lo: lo.expr, hi: hi.expr });
    }
    const e = subject.expr;
    if (subject.type !== 'num') {
      // Address sets become `==` tests, which know CIDR blocks, MAC and IPv6 addresses.
      return items
        .map((it): Cond => ({ kind: 'cmp', op: '==', left: e, right: it.lo, span: c.span }))
        .reduce((a, b) => ({ kind: 'or', left: a, right: b }));
    }
    if (e.kind === 'field' && e.field.either) {
      const [a, b] = e.field.either.map((n) => ({ kind: 'field' as const, field: fieldCatalog.get(n)!, span: e.span }));
      return { kind: 'or', left: { kind: 'in', expr: a!, items, span: c.span }, right: { kind: 'in', expr: b!, items, span: c.span } };
    }
    if (e.kind === 'num' && items.every((it) => it.lo.kind === 'num' && (it.hi === undefined || it.hi.kind === 'num'))) {
      const v = e.value;
      const hit = items.some((it) => {
        const lo = (it.lo as { value: number }).value;
        const hi = it.hi ? (it.hi as { value: number }).value : lo;
        return v >= lo && v <= hi;
      });
      return hit ? { kind: 'true' } : FALSE;
    }
    return { kind: 'in', expr: e, items, span: c.span };
  }

  /** A constant compared with or written to a field must be a value the field can hold. */
  private mustFit(field: FieldDef, value: Extract<Expr, { kind: 'num' }>, use: 'compare' | 'item' | 'set', op: CmpOp = '=='): void {
    const consequence = use === 'set' ? undefined
      : use === 'item' ? 'this item of the set can never match'
      : `this test is always ${op === '!=' ? 'true' : 'false'}`;
    if (value.value > field.max) {
      const what = field.kind === 'bool' ? 'a one-bit flag (0 or 1)' : `which holds 0 to ${field.max}`;
      this.fail(`${value.value} does not fit ${field.name}, ${what}`, value.span, consequence);
    }
    if (field.scale !== 1 && value.value % field.scale !== 0) {
      const lower = Math.floor(value.value / field.scale) * field.scale;
      this.fail(`${value.value} does not fit ${field.name}, which counts bytes in steps of ${field.scale}`, value.span,
        consequence ?? `use a multiple of ${field.scale}, such as ${lower} or ${lower + field.scale}`);
    }
  }

  // ------------------------------------------------------------ expressions

  /**
   * Checks and folds an expression. `either` fields (ip.addr, tcp.port) are accepted only when
   * `allowEither` says the expression is a whole side of a comparison or a set's subject.
   */
  private expr(e: Expr, where: 'match' | 'set', allowEither = false): { expr: Expr; type: ValueType } {
    switch (e.kind) {
      case 'num':
        return { expr: e, type: 'num' };
      case 'addr':
        if (e.prefix !== undefined && where === 'set') this.fail('a value to set is one address, not a CIDR block', e.span);
        return { expr: e, type: e.family };
      case 'field': {
        const f = e.field;
        const why = hookCannotSee(f.layer, this.hook);
        if (why) this.fail(`${f.name} cannot be read here: ${why}`, e.span, 'match VLAN tags with --hook xdp');
        if (f.either && !allowEither) {
          const hint = where === 'set' ? `use ${f.either[0]} or ${f.either[1]}` : `compare it directly (${f.name} == …), or use ${f.either[0]} or ${f.either[1]}`;
          this.fail(`${f.name} means ${f.either[0]} or ${f.either[1]} and has no single value`, e.span, hint);
        }
        return { expr: e, type: f.kind === 'uint' || f.kind === 'bool' ? 'num' : f.kind };
      }
      case 'arith': {
        const l = this.expr(e.left, where);
        const r = this.expr(e.right, where);
        for (const [side, t] of [[e.left, l.type], [e.right, r.type]] as const) {
          if (t !== 'num') this.fail(`arithmetic works on numbers, and ${this.text(side.span)} is ${TYPE_NAMES[t]}`, side.span);
        }
        const rv = r.expr.kind === 'num' ? r.expr.value : undefined;
        if ((e.op === '/' || e.op === '%') && rv === 0) this.fail(`${e.op === '/' ? 'division' : 'remainder'} by zero`, e.right.span);
        if ((e.op === '<<' || e.op === '>>') && rv !== undefined && rv >= 64) {
          this.fail(`shifting by ${rv} bits: values are 64 bits wide, so the most is 63`, e.right.span);
        }
        if (l.expr.kind === 'num' && rv !== undefined) {
          const folded = foldArith(e.op, l.expr.value, rv);
          if (folded !== undefined) return { expr: { kind: 'num', value: folded, span: e.span }, type: 'num' };
        }
        return { expr: { kind: 'arith', op: e.op, left: l.expr, right: r.expr, span: e.span }, type: 'num' };
      }
      case 'call': {
        if (e.fn === 'random' && where === 'match') {
          this.fail('random() is for values to set', e.span, 'to act on a share of the matching packets, use --probability P (probability: P in a file)');
        }
        const args = e.args.map((a) => {
          const c = this.expr(a, where);
          if (c.type !== 'num') this.fail(`${e.fn}() takes numbers, and ${this.text(a.span)} is ${TYPE_NAMES[c.type]}`, a.span);
          return c.expr;
        });
        const [a, b] = args as [Expr, Expr];
        if (a.kind === 'num' && b.kind === 'num') {
          if (e.fn === 'min') return { expr: { kind: 'num', value: Math.min(a.value, b.value), span: e.span }, type: 'num' };
          if (e.fn === 'max') return { expr: { kind: 'num', value: Math.max(a.value, b.value), span: e.span }, type: 'num' };
          if (a.value > b.value) this.fail(`random(${a.value}, ${b.value}): the low bound comes first`, e.span, `write random(${b.value}, ${a.value})`);
          if (a.value === b.value) return { expr: { kind: 'num', value: a.value, span: e.span }, type: 'num' };
        }
        return { expr: { kind: 'call', fn: e.fn, args, span: e.span }, type: 'num' };
      }
    }
  }

  // ------------------------------------------------------------ actions

  actions(list: Action[]): Action[] {
    const sets: Array<Extract<Action, { kind: 'set' }>> = [];
    const faults = new Map<FaultAction['kind'], FaultAction>();
    let verdict: Extract<Action, { kind: 'drop' | 'pass' | 'reject' }> | undefined;
    for (const a of list) {
      if (verdict) {
        this.fail(`nothing can follow ${verdict.kind}: it ends the rule`, a.span, `put ${verdict.kind} last`);
      }
      if (a.kind === 'set') {
        sets.push(this.set(a, sets));
      } else if (a.kind === 'duplicate' || a.kind === 'corrupt' || a.kind === 'truncate' || a.kind === 'delay' || a.kind === 'reorder') {
        if (faults.has(a.kind)) this.fail(`${a.kind} is given twice in this rule`, a.span, `give ${a.kind} once`);
        if ((a.kind === 'delay' && faults.has('reorder')) || (a.kind === 'reorder' && faults.has('delay'))) {
          this.fail('a rule can delay or reorder a packet, not both', a.span, 'give the two in separate rules');
        }
        faults.set(a.kind, this.fault(a));
      } else {
        const hold = faults.has('delay') ? 'delay' : faults.has('reorder') ? 'reorder' : undefined;
        if (a.kind === 'pass' && hold) {
          this.fail(`nothing can follow ${hold}: the held packet is sent on by the delay line`, a.span, 'remove pass');
        }
        if ((a.kind === 'drop' || a.kind === 'reject') && (sets.length > 0 || faults.size > 0)) {
          const what = sets.length > 0 ? 'the set actions' : `${[...faults.keys()].join(' and ')}`;
          this.fail(`${a.kind} discards the packet, so ${what} before it would have no effect`, a.span, `${a.kind} the packet in one rule and change packets in another`);
        }
        verdict = a;
      }
    }
    // Checksum fields go last: their value must be the one the packet keeps, so no fix-up
    // for another field of this rule may run after it.
    const isChecksum = (s: Extract<Action, { kind: 'set' }>): boolean => s.field.name.endsWith('.checksum');
    const ordered: Action[] = [...sets.filter((s) => !isChecksum(s)), ...sets.filter(isChecksum)];
    // Then the faults, in the order the program applies them: damage, cut, then copies of
    // the packet as the rule left it.
    // The delay comes last: it takes the packet away (to the delay line) with every change made.
    for (const k of ['corrupt', 'truncate', 'duplicate', 'delay', 'reorder'] as const) {
      const f = faults.get(k);
      if (f) ordered.push(f);
    }
    if (verdict) ordered.push(verdict);
    return ordered;
  }

  private fault(a: FaultAction): FaultAction {
    const whole = (n: number, lo: number, hi: number, what: string, example: string): void => {
      if (!Number.isInteger(n) || n < lo || n > hi) this.fail(`${what} must be a whole number from ${lo} to ${hi}, not ${n}`, a.span, example);
    };
    switch (a.kind) {
      case 'duplicate':
        if (this.hook === 'xdp') {
          this.fail('duplicate cannot run at xdp: XDP has no way to send a packet twice', a.span, 'use --hook ingress or --hook egress (tc), where copies are sent with bpf_clone_redirect');
        }
        whole(a.count, 1, MAX_DUPLICATES, 'the number of copies', 'duplicate 1 sends the packet twice in all');
        return a;
      case 'corrupt':
        whole(a.bits, 1, MAX_CORRUPT_BITS, 'the number of bits to flip', 'corrupt 1 flips one bit of the payload');
        return a;
      case 'truncate':
        whole(a.length, MIN_TRUNCATE, MAX_TRUNCATE, 'the length to cut to', 'truncate 60 keeps the first 60 bytes of the frame (Ethernet header included)');
        return a;
      case 'delay':
        if (a.ns < 0 || a.ns > MAX_DELAY_NS) this.fail(`the delay must be from 0 to 60s, not ${this.text(a.span).replace(/^delay\s+/, '')}`, a.span, 'for example: delay 50ms');
        if (a.jitterNs !== undefined) {
          if (a.jitterNs > a.ns && (a.distribution ?? 'uniform') === 'uniform') {
            this.fail('a uniform jitter must not exceed the delay: a packet cannot be sent before it arrived', a.span, 'for example: delay 50ms jitter 5ms');
          }
        } else if (a.distribution !== undefined) {
          this.fail('a distribution needs a jitter to spread', a.span, 'for example: delay 50ms jitter 5ms distribution uniform');
        }
        return a;
      case 'reorder':
        whole(a.by, 1, MAX_REORDER_BY, 'the number of packets that overtake the held one', 'reorder by 3 lets the next 3 packets of its connection go first');
        if (a.timeoutNs <= 0 || a.timeoutNs > MAX_DELAY_NS) this.fail('the reorder timeout must be more than 0 and at most 60s', a.span, 'for example: reorder by 2 timeout 20ms');
        return a;
    }
  }

  private set(a: Extract<Action, { kind: 'set' }>, earlier: Array<Extract<Action, { kind: 'set' }>>): Extract<Action, { kind: 'set' }> {
    const f = a.field;
    const nameSpan = { start: a.span.start + this.text(a.span).indexOf(f.name), end: 0 };
    nameSpan.end = nameSpan.start + f.name.length;
    if (!f.writable) {
      if (f.either) this.fail(`${f.name} means ${f.either[0]} or ${f.either[1]} and can only be matched`, nameSpan, `set ${f.either[0]} or ${f.either[1]}`);
      if (f.special === 'frame.len') this.fail('frame.len is the length of the packet and cannot be set', nameSpan);
      if (f.special === 'tcp.len') this.fail('tcp.len is computed from the IP and TCP length fields and can only be matched', nameSpan, 'set ip.len or ipv6.plen, or cut the payload with truncate');
      this.fail(`${f.name} cannot be set`, nameSpan);
    }
    const why = hookCannotSee(f.layer, this.hook);
    if (why) this.fail(`${f.name} cannot be set here: ${why}`, nameSpan, 'change VLAN tags with --hook xdp');
    for (const e of earlier) {
      if (e.field.name === f.name) this.fail(`${f.name} is set twice in this rule`, nameSpan, 'set each field once; every value reads the packet as it was before the rule');
      if (overlaps(e.field, f)) this.fail(`${f.name} overlaps ${e.field.name}, which this rule already sets`, nameSpan, 'set each bit once in a rule');
    }
    const v = this.expr(a.value, 'set');
    const want: ValueType = f.kind === 'uint' || f.kind === 'bool' ? 'num' : f.kind;
    if (v.type !== want) this.fail(`${f.name} is ${TYPE_NAMES[want]}, but ${this.text(a.value.span)} is ${TYPE_NAMES[v.type]}`, a.value.span);
    if (want !== 'num' && want !== 'ipv4' && v.expr.kind !== 'addr' && !(v.expr.kind === 'field' && v.expr.field.width === f.width)) {
      this.fail(`${f.name} can be set to an address or a field of the same kind`, a.value.span);
    }
    if (v.expr.kind === 'num') {
      this.mustFit(f, v.expr, 'set');
    } else if (want === 'num') {
      const range = constRange(v.expr);
      if (range && range[1] > f.max) {
        this.fail(`${this.text(a.value.span)} can exceed ${f.name}, which holds 0 to ${f.max}`, a.value.span);
      }
    }
    return { kind: 'set', field: f, value: v.expr, span: a.span };
  }
}

/** The [lo, hi] a value can take when only constants decide it (random(1, 300)), else undefined. */
function constRange(e: Expr): [number, number] | undefined {
  if (e.kind === 'num') return [e.value, e.value];
  if (e.kind !== 'call') return undefined;
  const [a, b] = e.args.map(constRange);
  if (!a || !b) return undefined;
  if (e.fn === 'random') return [Math.min(a[0], b[0]), Math.max(a[1], b[1])];
  if (e.fn === 'min') return [Math.min(a[0], b[0]), Math.min(a[1], b[1])];
  return [Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

/** Bits [start, end) a field occupies in its layer's header, counted from the header's first bit. */
export function fieldBits(f: FieldDef): [number, number] {
  if (f.mask === 0) return [f.offset * 8, (f.offset + f.width) * 8];
  const bits = Math.round(Math.log2(f.mask + 1));
  const end = f.offset * 8 + f.width * 8 - f.shift;
  return [end - bits, end];
}

function overlaps(a: FieldDef, b: FieldDef): boolean {
  if (a.layer !== b.layer) return false;
  const [a0, a1] = fieldBits(a);
  const [b0, b1] = fieldBits(b);
  return a0 < b1 && b0 < a1;
}

function compareConstants(op: CmpOp, a: number, b: number): boolean {
  switch (op) {
    case '==': return a === b;
    case '!=': return a !== b;
    case '<': return a < b;
    case '<=': return a <= b;
    case '>': return a > b;
    case '>=': return a >= b;
  }
}

/** 64-bit unsigned arithmetic, as the compiled program does it; undefined past 2^53. */
function foldArith(op: Extract<Expr, { kind: 'arith' }>['op'], a: number, b: number): number | undefined {
  const x = BigInt(a);
  const y = BigInt(b);
  let r: bigint;
  switch (op) {
    case '+': r = x + y; break;
    case '-': r = x - y; break;
    case '*': r = x * y; break;
    case '/': r = x / y; break;
    case '%': r = x % y; break;
    case '&': r = x & y; break;
    case '|': r = x | y; break;
    case '^': r = x ^ y; break;
    case '<<': r = x << y; break;
    case '>>': r = x >> y; break;
  }
  r = BigInt.asUintN(64, r);
  return r <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(r) : undefined;
}
