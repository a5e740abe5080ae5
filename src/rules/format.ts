/**
 * Rules back to text, with as few parentheses as the precedence allows. Parsing the output
 * gives the same rule again; `status`, traces and tests print rules through here.
 */
import { DEFAULT_REORDER_BY, DEFAULT_REORDER_TIMEOUT_NS, type Action, type ArithOp, type Cond, type Expr } from './ast.js';

const ARITH_PREC: Record<ArithOp, number> = {
  '|': 1, '^': 2, '&': 3, '<<': 4, '>>': 4, '+': 5, '-': 5, '*': 6, '/': 6, '%': 6,
};
const PRIMARY = 7;

function exprPrec(e: Expr): number {
  return e.kind === 'arith' ? ARITH_PREC[e.op] : PRIMARY;
}

export function formatExpr(e: Expr): string {
  switch (e.kind) {
    case 'num':
      return String(e.value);
    case 'addr':
      return formatAddress(e.family, e.bytes) + (e.prefix !== undefined ? `/${e.prefix}` : '');
    case 'field':
      return e.field.name;
    case 'call':
      return `${e.fn}(${e.args.map(formatExpr).join(', ')})`;
    case 'arith': {
      const p = ARITH_PREC[e.op];
      const l = formatExpr(e.left);
      const r = formatExpr(e.right);
      // Left-associative: the right operand needs parentheses at equal precedence too.
      const left = exprPrec(e.left) < p ? `(${l})` : l;
      const right = exprPrec(e.right) <= p ? `(${r})` : r;
      return `${left} ${e.op} ${right}`;
    }
  }
}

const COND_PREC = { or: 1, and: 2, not: 3 } as const;

function condPrec(c: Cond): number {
  return c.kind === 'or' || c.kind === 'and' || c.kind === 'not' ? COND_PREC[c.kind] : 4;
}

/** A condition as match text; the always-true match is `frame` (every packet has one). */
export function formatCond(c: Cond): string {
  switch (c.kind) {
    case 'true':
      return 'frame';
    case 'proto':
      return c.layer;
    case 'truthy':
      return formatExpr(c.expr);
    case 'cmp':
      return `${formatExpr(c.left)} ${c.op} ${formatExpr(c.right)}`;
    case 'in': {
      const item = (e: Expr): string => (exprPrec(e) === PRIMARY ? formatExpr(e) : `(${formatExpr(e)})`);
      const items = c.items.map((it) => (it.hi ? `${item(it.lo)}..${item(it.hi)}` : item(it.lo)));
      return `${formatExpr(c.expr)} in {${items.join(', ')}}`;
    }
    case 'not': {
      const a = formatCond(c.arg);
      return condPrec(c.arg) < COND_PREC.not ? `not (${a})` : `not ${a}`;
    }
    case 'and':
    case 'or': {
      const p = COND_PREC[c.kind];
      const l = formatCond(c.left);
      const r = formatCond(c.right);
      const left = condPrec(c.left) < p ? `(${l})` : l;
      const right = condPrec(c.right) <= p ? `(${r})` : r;
      return `${left} ${c.kind} ${right}`;
    }
  }
}

/** Nanoseconds in the largest unit that writes them whole: 50ms, 200us, 1s. */
function formatNs(ns: number): string {
  if (ns % 1_000_000_000 === 0 && ns > 0) return `${ns / 1_000_000_000}s`;
  if (ns % 1_000_000 === 0) return `${ns / 1_000_000}ms`;
  return `${ns / 1000}us`;
}

export function formatAction(a: Action): string {
  switch (a.kind) {
    case 'set': return `set ${a.field.name} = ${formatExpr(a.value)}`;
    case 'duplicate': return a.count === 1 ? 'duplicate' : `duplicate ${a.count}`;
    case 'corrupt': return a.bits === 1 ? 'corrupt' : `corrupt ${a.bits}`;
    case 'truncate': return `truncate ${a.length}`;
    case 'delay': return `delay ${formatNs(a.ns)}${a.jitterNs !== undefined ? ` jitter ${formatNs(a.jitterNs)}` : ''}${a.distribution ? ` distribution ${a.distribution}` : ''}`;
    case 'reorder': return `reorder${a.by !== DEFAULT_REORDER_BY ? ` by ${a.by}` : ''}${a.timeoutNs !== DEFAULT_REORDER_TIMEOUT_NS ? ` timeout ${formatNs(a.timeoutNs)}` : ''}`;
    case 'reject': return a.with === undefined ? 'reject' : `reject with ${a.with}`;
    default: return a.kind;
  }
}

/** `MATCH => ACTION, ACTION`; a rule matching every packet prints without a match. */
export function formatRule(rule: { match: Cond; actions: Action[] }): string {
  const actions = rule.actions.map(formatAction).join(', ');
  return rule.match.kind === 'true' ? `=> ${actions}` : `${formatCond(rule.match)} => ${actions}`;
}

/** Dotted IPv4, RFC 5952 IPv6 (longest zero run as ::), colon-separated MAC. */
export function formatAddress(family: 'ipv4' | 'ipv6' | 'mac', bytes: Uint8Array): string {
  if (family === 'ipv4') return Array.from(bytes).join('.');
  if (family === 'mac') return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}
