/**
 * A reference evaluator of checked match conditions over a frame, written from the rule
 * language's documented semantics (not from the compiler): values are 64-bit unsigned, a
 * field whose layer the packet lacks makes the comparison (or test) it appears in false,
 * `not` of such a comparison is true, `ip.addr != X` means neither address is X.
 */
import type { Cond, Expr, FieldDef } from '../../src/rules/ast.js';
import { lookupField } from '../../src/rules/catalog.js';
import { decode, fieldOffset, readField } from '../helpers/packets.js';

/** Thrown when an expression reads a field the packet lacks. */
export class Absent extends Error {}

const U64 = (v: bigint): bigint => BigInt.asUintN(64, v);

function fieldValue(frame: Uint8Array, f: FieldDef): bigint {
  const v = readField(frame, f);
  if (v === undefined) throw new Absent();
  return BigInt(v);
}

function fieldBytes(frame: Uint8Array, f: FieldDef): Uint8Array {
  const at = fieldOffset(decode(frame), f);
  if (at === undefined || at + f.width > frame.length) throw new Absent();
  return frame.subarray(at, at + f.width);
}

/** Draws for random(): the evaluator refuses them, since matches cannot use random(). */
export function evalExpr(frame: Uint8Array, e: Expr): bigint {
  switch (e.kind) {
    case 'num':
      return BigInt(e.value);
    case 'addr':
      if (e.family !== 'ipv4') throw new Error('reference: a wide address is not a number');
      return BigInt(((e.bytes[0]! << 24) | (e.bytes[1]! << 16) | (e.bytes[2]! << 8) | e.bytes[3]!) >>> 0);
    case 'field':
      return fieldValue(frame, e.field);
    case 'arith': {
      const l = evalExpr(frame, e.left);
      const r = evalExpr(frame, e.right);
      switch (e.op) {
        case '+': return U64(l + r);
        case '-': return U64(l - r);
        case '*': return U64(l * r);
        // eBPF: x / 0 is 0 and x % 0 is x.
        case '/': return r === 0n ? 0n : l / r;
        case '%': return r === 0n ? l : l % r;
        case '&': return l & r;
        case '|': return l | r;
        case '^': return l ^ r;
        case '<<': return U64(l << (r & 63n));
        case '>>': return l >> (r & 63n);
      }
      throw new Error('unreachable');
    }
    case 'call': {
      if (e.fn === 'random') throw new Error('reference: random() in a match');
      const a = evalExpr(frame, e.args[0]!);
      const b = evalExpr(frame, e.args[1]!);
      return e.fn === 'min' ? (a < b ? a : b) : (a > b ? a : b);
    }
  }
}

function cmp(op: string, a: bigint, b: bigint): boolean {
  switch (op) {
    case '==': return a === b;
    case '!=': return a !== b;
    case '<': return a < b;
    case '<=': return a <= b;
    case '>': return a > b;
    case '>=': return a >= b;
  }
  throw new Error(`reference: operator ${op}`);
}

function bytesMatch(got: Uint8Array, want: Uint8Array, prefix: number): boolean {
  for (let bit = 0; bit < prefix; bit++) {
    const m = 0x80 >> (bit % 8);
    if ((got[bit >> 3]! & m) !== (want[bit >> 3]! & m)) return false;
  }
  return true;
}

function compare(frame: Uint8Array, op: string, left: Expr, right: Expr): boolean {
  if (left.kind !== 'field' && right.kind === 'field') {
    const flip: Record<string, string> = { '==': '==', '!=': '!=', '<': '>', '<=': '>=', '>': '<', '>=': '<=' };
    return compare(frame, flip[op]!, right, left);
  }
  if (left.kind === 'field' && left.field.either) {
    const [x, y] = left.field.either.map((n) => ({ ...left, field: lookupField(n)! }));
    if (op === '!=') return compare(frame, '!=', x!, right) && compare(frame, '!=', y!, right);
    return compare(frame, op, x!, right) || compare(frame, op, y!, right);
  }
  try {
    if (left.kind === 'field' && (left.field.width === 6 || left.field.width === 16)) {
      if (right.kind !== 'addr') throw new Error('reference: wide field against a non-address');
      const same = bytesMatch(fieldBytes(frame, left.field), right.bytes, right.prefix ?? left.field.width * 8);
      return op === '==' ? same : !same;
    }
    let l = evalExpr(frame, left);
    let r = evalExpr(frame, right);
    if (right.kind === 'addr' && right.prefix !== undefined) {
      const mask = right.prefix === 0 ? 0n : (0xffffffffn << BigInt(32 - right.prefix)) & 0xffffffffn;
      l &= mask;
      r &= mask;
    }
    return cmp(op, l, r);
  } catch (err) {
    if (err instanceof Absent) return false;
    throw err;
  }
}

/** Whether a checked condition holds for the frame. */
export function evalCond(frame: Uint8Array, c: Cond): boolean {
  switch (c.kind) {
    case 'true':
      return true;
    case 'proto':
      return c.layer === 'frame' || decode(frame).layers[c.layer] !== undefined;
    case 'truthy':
      try {
        return evalExpr(frame, c.expr) !== 0n;
      } catch (err) {
        if (err instanceof Absent) return false;
        throw err;
      }
    case 'cmp':
      return compare(frame, c.op, c.left, c.right);
    case 'in':
      try {
        const v = evalExpr(frame, c.expr);
        return c.items.some((it) => {
          const lo = evalExpr(frame, it.lo);
          const hi = it.hi ? evalExpr(frame, it.hi) : lo;
          return v >= lo && v <= hi;
        });
      } catch (err) {
        if (err instanceof Absent) return false;
        throw err;
      }
    case 'and':
      return evalCond(frame, c.left) && evalCond(frame, c.right);
    case 'or':
      return evalCond(frame, c.left) || evalCond(frame, c.right);
    case 'not':
      return !evalCond(frame, c.arg);
  }
}
