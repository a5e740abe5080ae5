import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseMatchAt } from '../../src/rules/parser.js';
import { formatCond } from '../../src/rules/format.js';
import { lookupField } from '../../src/rules/catalog.js';
import type { ArithOp, CmpOp, Cond, Expr } from '../../src/rules/ast.js';

const span = { start: 0, end: 0 };
const NUM_FIELDS = ['ip.ttl', 'tcp.dstport', 'tcp.flags', 'udp.length', 'ipv6.flow', 'tcp.flags.syn'];
const ARITH: ArithOp[] = ['+', '-', '*', '/', '%', '&', '|', '^', '<<', '>>'];
const CMP: CmpOp[] = ['==', '!=', '<', '<=', '>', '>='];

const exprArb: fc.Arbitrary<Expr> = fc.letrec<{ expr: Expr }>((tie) => ({
  expr: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.nat(0xffffffff).map((value): Expr => ({ kind: 'num', value, span })),
    fc.constantFrom(...NUM_FIELDS).map((name): Expr => ({ kind: 'field', field: lookupField(name)!, span })),
    fc.tuple(fc.constantFrom(...ARITH), tie('expr'), tie('expr')).map(([op, left, right]): Expr => ({ kind: 'arith', op, left, right, span })),
    fc.tuple(fc.constantFrom('random' as const, 'min' as const, 'max' as const), tie('expr'), tie('expr'))
      .map(([fn, a, b]): Expr => ({ kind: 'call', fn, args: [a, b], span })),
  ),
})).expr;

const condArb: fc.Arbitrary<Cond> = fc.letrec<{ cond: Cond }>((tie) => ({
  cond: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom('tcp', 'udp', 'ipv6', 'icmp' as const).map((layer): Cond => ({ kind: 'proto', layer, span })),
    fc.tuple(fc.constantFrom(...CMP), exprArb, exprArb).map(([op, left, right]): Cond => ({ kind: 'cmp', op, left, right, span })),
    exprArb.map((expr): Cond => ({ kind: 'truthy', expr, span })),
    fc.tuple(exprArb, fc.array(fc.tuple(exprArb, fc.option(exprArb, { nil: undefined })), { minLength: 1, maxLength: 3 }))
      .map(([expr, items]): Cond => ({ kind: 'in', expr, items: items.map(([lo, hi]) => (hi ? { lo, hi } : { lo })), span })),
    fc.tuple(fc.constantFrom('and' as const, 'or' as const), tie('cond'), tie('cond')).map(([kind, left, right]): Cond => ({ kind, left, right })),
    tie('cond').map((arg): Cond => ({ kind: 'not', arg })),
  ),
})).cond;

/** The tree without spans, fields by name. */
function strip(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(strip);
  if (x && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    if ('name' in o && 'layer' in o && 'offset' in o) return o.name;
    return Object.fromEntries(Object.entries(o).filter(([k]) => k !== 'span').map(([k, v]) => [k, strip(v)]));
  }
  return x;
}

test('any condition prints to text that parses back to the same tree', () => {
  fc.assert(fc.property(condArb, (c) => {
    const text = formatCond(c);
    assert.deepEqual(strip(parseMatchAt(text)), strip(c), text);
  }), { numRuns: 400 });
});
