/**
 * Recursive-descent parser for rule text: `MATCH => ACTION, ACTION …`, and for the parts a
 * rules file gives separately (a match, an expression).
 *
 * Precedence, loosest first, as in Wireshark: `or ||`, `and &&`, `not !`, then a comparison
 * (`== != < <= > >=`, `in {…}`) or a bare test, then arithmetic with C's order among its
 * operators (`|`, `^`, `&`, `<< >>`, `+ -`, `* / %`). Unlike C, all arithmetic binds tighter
 * than comparison, so `tcp.flags & 0x12 == 0x12` means `(tcp.flags & 0x12) == 0x12`, as in
 * Wireshark.
 *
 * The parser resolves names against the field catalog and reports unknown ones; types,
 * values and hooks are the checker's business (check.ts).
 *
 * It enforces the limits of limits.ts that bound the trees it builds, before it recurses:
 * text length, nesting depth, operators, set members. Every later walk (checker, compiler,
 * formatter) recurses over these trees, so their depth is bounded here once for all of them.
 */
import { DEFAULT_REORDER_BY, DEFAULT_REORDER_TIMEOUT_NS, DELAY_DISTRIBUTIONS, type Action, type ArithOp, type CmpOp, type Cond, type DelayDistribution, type Expr, type RejectWith, type Span } from './ast.js';
import { fieldCatalog } from './catalog.js';
import { RuleError } from './errors.js';
import { tokenize, type Token } from './lexer.js';
import { MAX_NESTING, MAX_OPERATORS, MAX_RULE_LENGTH, MAX_SET_MEMBERS, overLimit, overLimitMessage, shorten } from './limits.js';

export interface ParsedRule {
  match: Cond;
  actions: Action[];
}

const CMP_WORDS: Record<string, CmpOp> = { eq: '==', ne: '!=', lt: '<', le: '<=', gt: '>', ge: '>=' };
const CMP_OPS = new Set<string>(['==', '!=', '<', '<=', '>', '>=']);
const KEYWORDS = new Set(['and', 'or', 'not', 'in', 'set', 'drop', 'pass', 'duplicate', 'corrupt', 'truncate', 'reject', 'delay', 'reorder', ...Object.keys(CMP_WORDS)]);
/** What `reject with …` accepts. */
export const REJECT_WITH: readonly RejectWith[] = ['tcp-reset', 'net-unreachable', 'host-unreachable', 'port-unreachable', 'proto-unreachable', 'admin-prohibited'];
const ACTION_LIST = 'drop, pass, set FIELD = VALUE, duplicate [N], corrupt [BITS], truncate LEN, delay DURATION, reorder [by N] or reject [with CODE]';
const FUNCTIONS = new Set(['random', 'min', 'max']);
/** Binary arithmetic operators by precedence level, loosest first (C's order). */
const ARITH_LEVELS: ArithOp[][] = [['|'], ['^'], ['&'], ['<<', '>>'], ['+', '-'], ['*', '/', '%']];
const ARITH_OPS = new Set<string>(ARITH_LEVELS.flat());

/** A whole rule in the one-line form. */
export function parseRuleText(source: string): ParsedRule {
  const p = new Parser(source, 0, source.length);
  return p.rule();
}

/** A match condition alone, from `source[start, end)`; spans index `source`. */
export function parseMatchAt(source: string, start = 0, end = source.length): Cond {
  const p = new Parser(source, start, end);
  const c = p.matchOnly();
  return c;
}

/** One expression alone, from `source[start, end)`; spans index `source`. */
export function parseExprAt(source: string, start = 0, end = source.length): Expr {
  return new Parser(source, start, end).exprOnly();
}

/** Actions alone (`set ip.ttl = 1, drop`), from `source[start, end)`. */
export function parseActionsAt(source: string, start = 0, end = source.length): Action[] {
  return new Parser(source, start, end).actionsOnly();
}

/** Refuses a rule text longer than MAX_RULE_LENGTH before anything reads it. */
export function checkRuleLength(text: string, what = 'the rule'): void {
  if (text.length > MAX_RULE_LENGTH) throw overLimit(what, text.length, MAX_RULE_LENGTH, 'characters');
}

class Parser {
  private readonly tokens: Token[];
  private pos = 0;
  /** Parentheses, `not`s and calls open around the current position. */
  private depth = 0;
  /** Binary operators read so far. */
  private operators = 0;

  constructor(private readonly source: string, start: number, end: number) {
    checkRuleLength(source.slice(start, end));
    this.tokens = tokenize(source, start, end);
  }

  /** Runs `inner` one nesting level deeper, refusing to go past MAX_NESTING. */
  private nested<T>(at: Token, inner: () => T): T {
    if (this.depth >= MAX_NESTING) {
      this.fail(overLimitMessage('the rule', this.depth + 1, MAX_NESTING, 'levels of nesting'), at.span, {
        hint: 'parentheses, not and function calls count; a long chain of and/or needs none',
      });
    }
    this.depth++;
    try {
      return inner();
    } finally {
      this.depth--;
    }
  }

  /** Counts one binary operator, refusing more than MAX_OPERATORS. */
  private operator(at: Token): void {
    this.operators++;
    if (this.operators > MAX_OPERATORS) {
      this.fail(overLimitMessage('the rule', this.operators, MAX_OPERATORS, 'operators'), at.span, {
        hint: 'to test one field against many values, use a set: tcp.port in {80, 443, 8000..8080}',
      });
    }
  }

  // ------------------------------------------------------------ entry points

  rule(): ParsedRule {
    let match: Cond = { kind: 'true' };
    if (!this.isOp('=>')) {
      match = this.or();
      if (!this.isOp('=>')) {
        const t = this.peek();
        if (t.kind === 'eof') {
          this.fail('a rule needs "=>" and what to do: drop, pass or set FIELD = VALUE', t.span, {
            hint: "for example: 'icmp.type == 8 => drop'",
          });
        }
        this.unexpected(t, '"=>" or and/or');
      }
    }
    this.next();
    const actions = this.actions();
    return { match, actions };
  }

  matchOnly(): Cond {
    if (this.peek().kind === 'eof') return { kind: 'true' };
    const c = this.or();
    this.expectEnd('and/or');
    return c;
  }

  exprOnly(): Expr {
    const e = this.expr();
    this.expectEnd('an operator');
    return e;
  }

  actionsOnly(): Action[] {
    return this.actions();
  }

  // ------------------------------------------------------------ conditions

  private or(): Cond {
    let left = this.and();
    while (this.isWord('or') || this.isOp('||')) {
      this.operator(this.next());
      left = { kind: 'or', left, right: this.and() };
    }
    return left;
  }

  private and(): Cond {
    let left = this.not();
    while (this.isWord('and') || this.isOp('&&')) {
      this.operator(this.next());
      left = { kind: 'and', left, right: this.not() };
    }
    return left;
  }

  private not(): Cond {
    if (this.isWord('not') || this.isOp('!')) {
      const word = this.next();
      return this.nested(word, () => ({ kind: 'not', arg: this.not() }));
    }
    return this.primaryCond();
  }

  private primaryCond(): Cond {
    if (!this.isOp('(')) return this.test();
    // `(` opens either a condition, `(tcp or udp)`, or an expression, `(ip.ttl + 1) == 65`.
    // Try the condition; if an operator follows its `)`, it was an expression after all.
    const save = this.pos;
    let condError: unknown;
    const operators = this.operators;
    try {
      const open = this.next();
      const c = this.nested(open, () => this.or());
      this.expectOp(')');
      if (!this.startsContinuation()) return c;
    } catch (err) {
      condError = err;
    }
    this.pos = save;
    // The expression reading counts the same operators again.
    const condOperators = this.operators;
    this.operators = operators;
    try {
      return this.test();
    } catch (exprError) {
      // Report whichever reading got further into the text: that one is what the user meant.
      if (condError instanceof RuleError && exprError instanceof RuleError && condError.span.start > exprError.span.start) {
        this.operators = condOperators;
        throw condError;
      }
      throw exprError;
    }
  }

  private startsContinuation(): boolean {
    const t = this.peek();
    if (t.kind === 'op') return CMP_OPS.has(t.text) || ARITH_OPS.has(t.text);
    return t.kind === 'ident' && (t.text === 'in' || t.text in CMP_WORDS);
  }

  /** A comparison, a set membership, a bare protocol name or a bare value test. */
  private test(): Cond {
    const first = this.peek();
    if (first.kind === 'ident' && !fieldCatalog.get(first.text) && fieldCatalog.protocol(first.text)) {
      this.next();
      if (this.startsContinuation() || this.isOp('=')) {
        this.fail(`"${first.text}" is a protocol name: it tests that the packet has that header and has no value`, first.span, {
          hint: `compare one of its fields instead, e.g. ${exampleFieldOf(first.text)}`,
        });
      }
      return { kind: 'proto', layer: fieldCatalog.protocol(first.text)!, span: first.span };
    }
    const left = this.expr();
    const t = this.peek();
    let op: CmpOp | undefined;
    if (t.kind === 'op' && CMP_OPS.has(t.text)) op = t.text as CmpOp;
    else if (t.kind === 'ident' && t.text in CMP_WORDS) op = CMP_WORDS[t.text];
    if (op) {
      this.next();
      const right = this.expr();
      const n = this.peek();
      if ((n.kind === 'op' && CMP_OPS.has(n.text)) || (n.kind === 'ident' && n.text in CMP_WORDS)) {
        this.fail('comparisons do not chain', n.span, { hint: 'join two comparisons with "and": a < b and b < c' });
      }
      return { kind: 'cmp', op, left, right, span: { start: left.span.start, end: right.span.end } };
    }
    if (this.isWord('in')) {
      this.next();
      return this.set(left);
    }
    if (this.isOp('=')) {
      this.fail('"=" assigns; to compare, write "=="', t.span, { hint: 'a field is changed by an action after "=>": set FIELD = VALUE' });
    }
    if (this.isOp('~') || this.isWord('contains') || this.isWord('matches')) {
      this.fail(`"${t.text}" is not supported: rules compare numbers and addresses`, t.span);
    }
    return { kind: 'truthy', expr: left, span: left.span };
  }

  private set(subject: Expr): Cond {
    const open = this.peek();
    if (!this.isOp('{')) this.unexpected(open, '"{" to start the set, e.g. in {80, 443}');
    this.next();
    const items: Array<{ lo: Expr; hi?: Expr }> = [];
    for (;;) {
      const t = this.peek();
      if (this.isOp('}')) {
        if (items.length === 0) this.fail('a set needs at least one value', { start: open.span.start, end: t.span.end });
        this.next();
        return { kind: 'in', expr: subject, items, span: { start: subject.span.start, end: t.span.end } };
      }
      if (t.kind === 'eof') this.fail('the set is not closed: "}" is missing', t.span);
      if (items.length === MAX_SET_MEMBERS) {
        this.fail(overLimitMessage('the set', items.length + 1, MAX_SET_MEMBERS, 'members'), t.span, { hint: 'a range lo..hi is one member' });
      }
      const lo = this.unary();
      if (this.isOp('..')) {
        this.next();
        items.push({ lo, hi: this.unary() });
      } else {
        items.push({ lo });
      }
      if (this.isOp('-')) {
        this.fail('a range in a set is written lo..hi, as in Wireshark', this.peek().span, { hint: 'for example: tcp.port in {80, 8000..8080}' });
      }
      if (this.isOp(',')) this.next();
    }
  }

  // ------------------------------------------------------------ expressions

  private expr(level = 0): Expr {
    if (level === ARITH_LEVELS.length) return this.unary();
    let left = this.expr(level + 1);
    const ops = ARITH_LEVELS[level]!;
    for (;;) {
      const t = this.peek();
      if (t.kind !== 'op' || !ops.includes(t.text as ArithOp)) return left;
      this.operator(this.next());
      const right = this.expr(level + 1);
      left = { kind: 'arith', op: t.text as ArithOp, left, right, span: { start: left.span.start, end: right.span.end } };
    }
  }

  private unary(): Expr {
    const t = this.peek();
    if (t.kind === 'op' && t.text === '-') {
      this.fail('values are unsigned: there are no negative numbers', t.span, { hint: 'subtract from a field instead: ip.ttl - 1' });
    }
    if (t.kind === 'op' && (t.text === '~' || t.text === '!')) {
      this.fail(`"${t.text}" cannot be used on a value`, t.span, { hint: 'use ^ with a mask to flip bits: tcp.flags ^ 0x8' });
    }
    return this.primary();
  }

  private primary(): Expr {
    const t = this.next();
    switch (t.kind) {
      case 'num':
        return { kind: 'num', value: t.value, span: t.span };
      case 'addr': {
        const e: Expr = { kind: 'addr', family: t.family, bytes: t.bytes, span: t.span };
        if (t.prefix !== undefined) e.prefix = t.prefix;
        return e;
      }
      case 'op':
        if (t.text === '(') {
          const e = this.nested(t, () => this.expr());
          this.expectOp(')');
          return e;
        }
        return this.unexpected(t, 'a value (a number, an address or a field)');
      case 'eof':
        return this.unexpected(t, 'a value (a number, an address or a field)');
      case 'ident':
        return this.name(t);
      case 'duration':
        return this.fail(`${t.text} is a duration: only delay takes one`, t.span, { hint: 'values are plain numbers, addresses or fields' });
    }
  }

  private name(t: Extract<Token, { kind: 'ident' }>): Expr {
    const field = fieldCatalog.get(t.text);
    if (field) return { kind: 'field', field, span: t.span };
    if (this.isOp('(')) {
      if (!FUNCTIONS.has(t.text)) this.fail(`unknown function "${t.text}"`, t.span, { hint: 'the functions are random(lo, hi), min(a, b) and max(a, b)' });
      return this.call(t);
    }
    if (fieldCatalog.protocol(t.text)) {
      this.fail(`"${t.text}" is a protocol name, not a value`, t.span, { hint: `use one of its fields, e.g. ${exampleFieldOf(t.text)}` });
    }
    if (KEYWORDS.has(t.text)) this.unexpected(t, 'a value (a number, an address or a field)');
    if (FUNCTIONS.has(t.text)) this.fail(`${t.text} is a function: write ${t.text}(a, b)`, t.span);
    return unknownField(this.source, t.text, t.span);
  }

  private call(t: Extract<Token, { kind: 'ident' }>): Expr {
    const fn = t.text as 'random' | 'min' | 'max';
    this.expectOp('(');
    const args: Expr[] = [];
    if (!this.isOp(')')) {
      for (;;) {
        args.push(this.nested(t, () => this.expr()));
        if (!this.isOp(',')) break;
        this.next();
      }
    }
    const close = this.peek();
    this.expectOp(')');
    const span = { start: t.span.start, end: close.span.end };
    if (args.length !== 2) {
      const usage = fn === 'random' ? 'random(lo, hi)' : `${fn}(a, b)`;
      this.fail(`${fn} takes two arguments: ${usage}`, span);
    }
    return { kind: 'call', fn, args, span };
  }

  // ------------------------------------------------------------ actions

  private actions(): Action[] {
    const out: Action[] = [];
    for (;;) {
      out.push(this.action());
      const t = this.peek();
      if (t.kind === 'eof') return out;
      if (!this.isOp(',')) this.unexpected(t, '"," between actions, or the end of the rule');
      this.next();
    }
  }

  private action(): Action {
    const t = this.next();
    if (t.kind === 'ident' && (t.text === 'drop' || t.text === 'pass')) return { kind: t.text, span: t.span };
    if (t.kind === 'ident' && (t.text === 'duplicate' || t.text === 'corrupt')) {
      const n = this.peek();
      if (n.kind !== 'num') return t.text === 'duplicate' ? { kind: 'duplicate', count: 1, span: t.span } : { kind: 'corrupt', bits: 1, span: t.span };
      this.next();
      const span = { start: t.span.start, end: n.span.end };
      return t.text === 'duplicate' ? { kind: 'duplicate', count: n.value, span } : { kind: 'corrupt', bits: n.value, span };
    }
    if (t.kind === 'ident' && t.text === 'truncate') {
      const n = this.peek();
      if (n.kind !== 'num') this.fail('truncate needs the length to cut the frame to, in bytes: truncate LEN', n.span, { hint: 'for example: truncate 60' });
      this.next();
      return { kind: 'truncate', length: n.value, span: { start: t.span.start, end: n.span.end } };
    }
    if (t.kind === 'ident' && t.text === 'delay') return this.delay(t);
    if (t.kind === 'ident' && t.text === 'reorder') return this.reorder(t);
    if (t.kind === 'ident' && t.text === 'reject') {
      if (!this.isWord('with')) return { kind: 'reject', span: t.span };
      this.next();
      // Codes have dashes, which the lexer reads as minus signs: take the words and dashes up to ',' or the end.
      const first = this.peek();
      let end = first.span.start;
      const start = first.span.start;
      while (this.peek().kind === 'ident' || this.isOp('-')) end = this.next().span.end;
      const code = this.source.slice(start, end).replace(/\s+/g, '');
      if (!(REJECT_WITH as readonly string[]).includes(code)) {
        this.fail(`reject with ${code === '' ? '…' : `"${shorten(code)}"`}: the answer must be one of ${REJECT_WITH.join(', ')}`, { start, end: Math.max(end, start + 1) });
      }
      return { kind: 'reject', with: code as RejectWith, span: { start: t.span.start, end } };
    }
    if (t.kind === 'ident' && t.text === 'set') {
      const name = this.next();
      if (name.kind !== 'ident' || KEYWORDS.has(name.text)) this.unexpected(name, 'the name of the field to set');
      const field = fieldCatalog.get(name.text);
      if (!field) {
        if (fieldCatalog.protocol(name.text)) {
          this.fail(`"${name.text}" is a protocol name; set one of its fields`, name.span, { hint: `for example: set ${exampleFieldOf(name.text)} = …` });
        }
        unknownField(this.source, name.text, name.span);
      }
      const eq = this.peek();
      if (this.isOp('==')) this.fail('set takes a single "=": set FIELD = VALUE', eq.span);
      if (!this.isOp('=')) this.unexpected(eq, '"=" after the field name');
      this.next();
      const value = this.expr();
      return { kind: 'set', field: field!, value, span: { start: t.span.start, end: value.span.end } };
    }
    if (t.kind === 'ident' && fieldCatalog.get(t.text) && this.isOp('=')) {
      this.fail(`an action starts with "set": set ${t.text} = …`, t.span);
    }
    if (t.kind === 'eof') this.fail(`an action is missing: ${ACTION_LIST}`, t.span);
    return this.unexpected(t, `an action: ${ACTION_LIST}`);
  }

  // ------------------------------------------------------------ tokens

  private peek(): Token {
    return this.tokens[this.pos]!;
  }

  private next(): Token {
    const t = this.tokens[this.pos]!;
    if (t.kind !== 'eof') this.pos++;
    return t;
  }

  private isOp(text: string): boolean {
    const t = this.peek();
    return t.kind === 'op' && t.text === text;
  }

  private isWord(text: string): boolean {
    const t = this.peek();
    return t.kind === 'ident' && t.text === text;
  }

  private expectOp(text: string): void {
    const t = this.peek();
    if (!this.isOp(text)) this.unexpected(t, `"${text}"`);
    this.next();
  }

  private expectEnd(what: string): void {
    const t = this.peek();
    if (t.kind !== 'eof') this.unexpected(t, `${what} or the end`);
  }

  /** `delay DURATION [jitter DURATION] [distribution uniform|normal|pareto]`, after the word delay. */
  private delay(word: Extract<Token, { kind: 'ident' }>): Action {
    const duration = (what: string): Extract<Token, { kind: 'duration' }> => {
      const d = this.peek();
      if (d.kind !== 'duration') this.fail(`${what} needs a duration with its unit: 50ms, 200us or 1s`, d.span, { hint: 'for example: delay 50ms jitter 5ms' });
      this.next();
      return d;
    };
    const time = duration('delay');
    const action: Extract<Action, { kind: 'delay' }> = { kind: 'delay', ns: time.ns, span: { start: word.span.start, end: time.span.end } };
    if (this.isWord('jitter')) {
      this.next();
      const jitter = duration('jitter');
      action.jitterNs = jitter.ns;
      action.span = { start: action.span.start, end: jitter.span.end };
    }
    if (this.isWord('distribution')) {
      this.next();
      const d = this.next();
      if (d.kind !== 'ident' || !(DELAY_DISTRIBUTIONS as readonly string[]).includes(d.text)) {
        this.fail(`the distribution must be one of ${DELAY_DISTRIBUTIONS.join(', ')}`, d.span);
      }
      action.distribution = d.text as DelayDistribution;
      action.span = { start: action.span.start, end: d.span.end };
    }
    return action;
  }

  /** `reorder [by N] [timeout DURATION]`, after the word reorder. */
  private reorder(word: Extract<Token, { kind: 'ident' }>): Action {
    const action: Extract<Action, { kind: 'reorder' }> = { kind: 'reorder', by: DEFAULT_REORDER_BY, timeoutNs: DEFAULT_REORDER_TIMEOUT_NS, span: word.span };
    if (this.isWord('by')) {
      this.next();
      const n = this.peek();
      if (n.kind !== 'num') this.fail('reorder by needs the number of later packets that overtake this one', n.span, { hint: 'for example: reorder by 3' });
      this.next();
      action.by = n.value;
      action.span = { start: action.span.start, end: n.span.end };
    }
    if (this.isWord('timeout')) {
      this.next();
      const d = this.peek();
      if (d.kind !== 'duration') this.fail('timeout needs a duration with its unit: 50ms, 200us or 1s', d.span, { hint: 'for example: reorder by 2 timeout 20ms' });
      this.next();
      action.timeoutNs = d.ns;
      action.span = { start: action.span.start, end: d.span.end };
    }
    return action;
  }

  private unexpected(t: Token, expected: string): never {
    const found = t.kind === 'eof' ? 'the end of the rule' : `"${shorten(this.source.slice(t.span.start, t.span.end))}"`;
    return this.fail(`expected ${expected}, found ${found}`, t.span);
  }

  private fail(reason: string, span: Span, opts: { hint?: string } = {}): never {
    throw new RuleError(reason, this.source, span, opts);
  }
}

function unknownField(source: string, name: string, span: Span): never {
  const near = fieldCatalog.nearestField(name);
  const reason = near ? `unknown field "${name}" (did you mean ${near}?)` : `unknown field "${name}"`;
  throw new RuleError(reason, source, span, { hint: near ? undefined : 'docs/fields.md lists every field' });
}

function exampleFieldOf(protocol: string): string {
  const examples: Record<string, string> = {
    frame: 'frame.len', eth: 'eth.type', vlan: 'vlan.id', ip: 'ip.ttl', ipv6: 'ipv6.hlim', tcp: 'tcp.dstport',
    udp: 'udp.dstport', icmp: 'icmp.type', icmpv6: 'icmpv6.type',
  };
  return examples[protocol] ?? 'ip.ttl';
}
