/**
 * Tokens of the rule language. Addresses are tokens of their own (198.18.0.0/15, 2001:db8::1,
 * 02:00:00:00:00:01) so the parser never has to glue digits, dots and colons back together.
 */
import type { Span } from './ast.js';
import { RuleError } from './errors.js';
import { MAX_NAME_LENGTH, overLimitMessage, shorten } from './limits.js';

export type Token =
  | { kind: 'ident'; text: string; span: Span }
  | { kind: 'num'; value: number; text: string; span: Span }
  /** A whole number with a time unit (50ms, 200us, 1s), for `delay`: in nanoseconds. */
  | { kind: 'duration'; ns: number; text: string; span: Span }
  | { kind: 'addr'; family: 'ipv4' | 'ipv6' | 'mac'; bytes: Uint8Array; prefix?: number; text: string; span: Span }
  | { kind: 'op'; text: string; span: Span }
  | { kind: 'eof'; text: ''; span: Span };

/** Longest first, so `<<` wins over `<` and `=>` over `=`. */
const OPERATORS = [
  '=>', '==', '!=', '<=', '>=', '<<', '>>', '&&', '||', '..',
  '<', '>', '!', '&', '|', '^', '+', '-', '*', '/', '%', '(', ')', '{', '}', ',', '=', '~',
];

/** Time units a number may carry (`delay 50ms`), in nanoseconds. */
const DURATION_UNITS_NS: Record<string, number> = { us: 1_000, ms: 1_000_000, s: 1_000_000_000 };

/** Characters lexAddress looks at: more than any address literal has. */
const MAX_ADDRESS_TEXT = 64;

/** Literals are at most 32 bits: no field is wider, and larger constants are surely mistakes. */
export const MAX_LITERAL = 0xffffffff;

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';
const isIdentStart = (c: string | undefined): boolean => c !== undefined && /[A-Za-z_]/.test(c);
const isIdentChar = (c: string | undefined): boolean => c !== undefined && /[A-Za-z0-9_.]/.test(c);
const isAddrChar = (c: string | undefined): boolean => c !== undefined && /[0-9A-Fa-f:.]/.test(c);

/**
 * Splits `source[start, end)` into tokens whose spans index `source` itself, so a part of a
 * larger text (a YAML value inside a rebuilt rule) reports positions in the whole.
 */
export function tokenize(source: string, start = 0, end = source.length): Token[] {
  const tokens: Token[] = [];
  let i = start;
  const fail = (reason: string, from: number, to: number, hint?: string): never => {
    throw new RuleError(reason, source, { start: from, end: to }, { hint });
  };
  while (i < end) {
    const c = source[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    const addr = lexAddress(source, i, end, fail);
    if (addr) {
      tokens.push(addr);
      i = addr.span.end;
      continue;
    }
    if (isDigit(c)) {
      const tok = lexNumber(source, i, end, fail);
      tokens.push(tok);
      i = tok.span.end;
      continue;
    }
    if (isIdentStart(c)) {
      let j = i + 1;
      while (j < end && isIdentChar(source[j])) j++;
      // Checked first: every later step (the catalog lookup, the "did you mean") costs more per character.
      if (j - i > MAX_NAME_LENGTH) fail(overLimitMessage('a name', j - i, MAX_NAME_LENGTH, 'characters'), i, j);
      // `tcp.port in {80..90}` never reaches here, but `a..b` with names should not eat the dots.
      let text = source.slice(i, j);
      const range = text.indexOf('..');
      if (range >= 0) {
        text = text.slice(0, range);
        j = i + range;
      }
      if (text.endsWith('.')) fail(`"${shorten(text)}" is not a field name: it ends with a dot`, i, j);
      tokens.push({ kind: 'ident', text, span: { start: i, end: j } });
      i = j;
      continue;
    }
    const op = OPERATORS.find((o) => source.startsWith(o, i) && i + o.length <= end);
    if (op) {
      tokens.push({ kind: 'op', text: op, span: { start: i, end: i + op.length } });
      i += op.length;
      continue;
    }
    if (c === '"' || c === "'") fail('strings are not values in rules; fields hold numbers and addresses', i, i + 1);
    fail(`unexpected character "${c}"`, i, i + 1);
  }
  tokens.push({ kind: 'eof', text: '', span: { start: end, end } });
  return tokens;
}

type Fail = (reason: string, from: number, to: number, hint?: string) => never;

function lexNumber(source: string, i: number, end: number, fail: Fail): Token {
  let j = i;
  let value: number;
  if (source[i] === '0' && (source[i + 1] === 'x' || source[i + 1] === 'X')) {
    j = i + 2;
    while (j < end && /[0-9A-Fa-f]/.test(source[j]!)) j++;
    if (j === i + 2) fail('"0x" must be followed by hex digits', i, j + 1);
    value = parseInt(source.slice(i + 2, j), 16);
  } else {
    while (j < end && isDigit(source[j])) j++;
    const digits = source.slice(i, j);
    if (digits.length > 1 && digits[0] === '0') {
      const hint = digits.length > 12 ? undefined : `write ${Number(digits)} for decimal, or 0x${parseInt(digits, 8).toString(16)} for the octal value`;
      fail(`"${shorten(digits)}" has a leading zero, which Wireshark reads as octal`, i, j, hint);
    }
    value = Number(digits);
  }
  if (j < end && isIdentChar(source[j]) && !(source[j] === '.' && source[j + 1] === '.')) {
    let k = j;
    while (k < end && isIdentChar(source[k])) k++;
    const unitNs = DURATION_UNITS_NS[source.slice(j, k)];
    if (unitNs !== undefined && source[i + 1] !== 'x' && source[i + 1] !== 'X') {
      return { kind: 'duration', ns: value * unitNs, text: source.slice(i, k), span: { start: i, end: k } };
    }
    if (source[j] === '.') fail(`"${shorten(source.slice(i, k))}" is not a number or an IPv4 address`, i, k);
    fail(`"${shorten(source.slice(i, k))}" is not a number`, i, k);
  }
  if (value > MAX_LITERAL) fail(`${shorten(source.slice(i, j))} is too large: numbers are at most 0xffffffff`, i, j);
  return { kind: 'num', value, text: source.slice(i, j), span: { start: i, end: j } };
}

/** An IPv4, IPv6 or MAC literal starting at i (with an optional /prefix), or undefined. */
function lexAddress(source: string, i: number, end: number, fail: Fail): Token | undefined {
  if (!isAddrChar(source[i]) || source[i] === '.') return undefined;
  let j = i;
  // No address is longer than this (IPv6 with an IPv4 tail is at most 45 characters): scanning
  // a long run of digits and dots to its end at every `..` of `1..2..3…` would be quadratic.
  const stop = Math.min(end, i + MAX_ADDRESS_TEXT);
  while (j < stop && isAddrChar(source[j])) j++;
  let text = source.slice(i, j);
  // An address starting with a hex letter would otherwise be an identifier: only take it if a
  // colon makes it an IPv6 or MAC address, and it is not followed by more identifier text.
  if (text.includes(':')) {
    if (j < end && isIdentChar(source[j])) return undefined;
    const mac = /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/.test(text);
    if (mac) {
      const bytes = Uint8Array.from(text.split(':').map((h) => parseInt(h, 16)));
      if (source[j] === '/') fail('a MAC address cannot have a prefix length', i, j + 1);
      return { kind: 'addr', family: 'mac', bytes, text, span: { start: i, end: j } };
    }
    const bytes = parseIpv6(text);
    if (!bytes) fail(`"${shorten(text)}" is not a valid IPv6 or MAC address`, i, j);
    return withPrefix(source, i, j, end, 'ipv6', bytes!, fail);
  }
  if (!isDigit(source[i])) return undefined;
  // Ranges in sets: `80..90` is a number, the `..` operator, a number.
  const dots = text.indexOf('..');
  if (dots >= 0) {
    text = text.slice(0, dots);
    j = i + dots;
  }
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(text)) return undefined;
  const parts = text.split('.').map(Number);
  if (parts.some((p) => p > 255) || text.split('.').some((p) => p.length > 1 && p.startsWith('0'))) {
    fail(`"${shorten(text)}" is not a valid IPv4 address`, i, j);
  }
  return withPrefix(source, i, j, end, 'ipv4', Uint8Array.from(parts), fail);
}

function withPrefix(
  source: string, i: number, j: number, end: number, family: 'ipv4' | 'ipv6', bytes: Uint8Array, fail: Fail,
): Token {
  const text = source.slice(i, j);
  if (source[j] !== '/' || !isDigit(source[j + 1])) {
    return { kind: 'addr', family, bytes, text, span: { start: i, end: j } };
  }
  let k = j + 1;
  while (k < end && isDigit(source[k])) k++;
  const prefix = Number(source.slice(j + 1, k));
  const bits = family === 'ipv4' ? 32 : 128;
  if (prefix > bits) fail(`prefix length /${shorten(source.slice(j + 1, k))} is longer than an ${family === 'ipv4' ? 'IPv4' : 'IPv6'} address (${bits} bits)`, j, k);
  return { kind: 'addr', family, bytes, prefix, text: source.slice(i, k), span: { start: i, end: k } };
}

/** RFC 4291 text form (with :: and an optional dotted IPv4 tail) to 16 bytes, or undefined. */
export function parseIpv6(text: string): Uint8Array | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (s: string): number[] | undefined => {
    if (s === '') return [];
    const out: number[] = [];
    const parts = s.split(':');
    for (let n = 0; n < parts.length; n++) {
      const p = parts[n]!;
      if (n === parts.length - 1 && p.includes('.')) {
        if (!/^\d+\.\d+\.\d+\.\d+$/.test(p)) return undefined;
        const b = p.split('.').map(Number);
        if (b.some((x) => x > 255)) return undefined;
        out.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!);
      } else {
        if (!/^[0-9A-Fa-f]{1,4}$/.test(p)) return undefined;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((g, n) => {
    bytes[2 * n] = g >> 8;
    bytes[2 * n + 1] = g & 0xff;
  });
  return bytes;
}
