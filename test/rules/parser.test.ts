import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseExprAt, parseMatchAt, parseRuleText } from '../../src/rules/parser.js';
import { formatCond, formatExpr, formatRule } from '../../src/rules/format.js';
import { tokenize, parseIpv6 } from '../../src/rules/lexer.js';
import type { Cond, Expr } from '../../src/rules/ast.js';
import { rule } from './helpers.js';

/** A compact shape of a condition: fields by name, no spans. */
function shape(c: Cond): unknown {
  switch (c.kind) {
    case 'true': return 'true';
    case 'proto': return c.layer;
    case 'truthy': return ['?', eshape(c.expr)];
    case 'cmp': return [c.op, eshape(c.left), eshape(c.right)];
    case 'in': return ['in', eshape(c.expr), c.items.map((i) => (i.hi ? [eshape(i.lo), eshape(i.hi)] : eshape(i.lo)))];
    case 'not': return ['not', shape(c.arg)];
    case 'and': case 'or': return [c.kind, shape(c.left), shape(c.right)];
  }
}

function eshape(e: Expr): unknown {
  switch (e.kind) {
    case 'num': return e.value;
    case 'addr': return `${e.family}:${Array.from(e.bytes).join('.')}${e.prefix !== undefined ? `/${e.prefix}` : ''}`;
    case 'field': return e.field.name;
    case 'arith': return [e.op, eshape(e.left), eshape(e.right)];
    case 'call': return [e.fn, ...e.args.map(eshape)];
  }
}

const m = (text: string): unknown => shape(parseMatchAt(text));
const x = (text: string): unknown => eshape(parseExprAt(text));

test('logic: not binds tighter than and, and tighter than or; both spellings', () => {
  assert.deepEqual(m('tcp or udp and icmp'), ['or', 'tcp', ['and', 'udp', 'icmp']]);
  assert.deepEqual(m('tcp and udp or icmp'), ['or', ['and', 'tcp', 'udp'], 'icmp']);
  assert.deepEqual(m('not tcp and udp'), ['and', ['not', 'tcp'], 'udp']);
  assert.deepEqual(m('!tcp || udp && !icmp'), ['or', ['not', 'tcp'], ['and', 'udp', ['not', 'icmp']]]);
  assert.deepEqual(m('not not ip'), ['not', ['not', 'ip']]);
  assert.deepEqual(m('(tcp or udp) and ip'), ['and', ['or', 'tcp', 'udp'], 'ip']);
  assert.deepEqual(m('tcp and udp and ip'), ['and', ['and', 'tcp', 'udp'], 'ip']);
});

test('comparisons bind tighter than logic, arithmetic tighter than comparisons', () => {
  assert.deepEqual(m('ip.ttl == 1 and tcp.dstport != 80'), ['and', ['==', 'ip.ttl', 1], ['!=', 'tcp.dstport', 80]]);
  assert.deepEqual(m('tcp.flags & 0x12 == 0x12'), ['==', ['&', 'tcp.flags', 18], 18]);
  assert.deepEqual(m('ip.ttl + 1 > 2 * 3'), ['>', ['+', 'ip.ttl', 1], ['*', 2, 3]]);
  for (const [word, op] of [['eq', '=='], ['ne', '!='], ['lt', '<'], ['le', '<='], ['gt', '>'], ['ge', '>=']]) {
    assert.deepEqual(m(`ip.ttl ${word} 3`), [op, 'ip.ttl', 3]);
  }
  for (const op of ['==', '!=', '<', '<=', '>', '>=']) assert.deepEqual(m(`ip.ttl ${op} 3`), [op, 'ip.ttl', 3]);
});

test('arithmetic follows C among its operators and associates to the left', () => {
  assert.deepEqual(x('1 | 2 ^ 3 & 4 << 5 + 6 * 7'), ['|', 1, ['^', 2, ['&', 3, ['<<', 4, ['+', 5, ['*', 6, 7]]]]]]);
  assert.deepEqual(x('10 - 3 - 2'), ['-', ['-', 10, 3], 2]);
  assert.deepEqual(x('8 / 4 % 3'), ['%', ['/', 8, 4], 3]);
  assert.deepEqual(x('1 >> 2 << 3'), ['<<', ['>>', 1, 2], 3]);
  assert.deepEqual(x('(1 + 2) * 3'), ['*', ['+', 1, 2], 3]);
  assert.deepEqual(x('random(1, ip.ttl)'), ['random', 1, 'ip.ttl']);
  assert.deepEqual(x('min(ip.ttl, 5) + max(1, 2)'), ['+', ['min', 'ip.ttl', 5], ['max', 1, 2]]);
});

test('a parenthesis opens a condition or an expression, whichever the text is', () => {
  assert.deepEqual(m('(ip.ttl + 1) * 2 == 66'), ['==', ['*', ['+', 'ip.ttl', 1], 2], 66]);
  assert.deepEqual(m('(ip.ttl) == 1'), ['==', 'ip.ttl', 1]);
  assert.deepEqual(m('((tcp))'), 'tcp');
  assert.deepEqual(m('(tcp.flags & 2)'), ['?', ['&', 'tcp.flags', 2]]);
  assert.deepEqual(m('not (ip.ttl == 1 or ip.ttl == 2)'), ['not', ['or', ['==', 'ip.ttl', 1], ['==', 'ip.ttl', 2]]]);
});

test('bare protocol names and bare value tests', () => {
  assert.deepEqual(m('tcp'), 'tcp');
  assert.deepEqual(m('ipv6 and icmpv6'), ['and', 'ipv6', 'icmpv6']);
  assert.deepEqual(m('tcp.flags.syn'), ['?', 'tcp.flags.syn']);
  assert.deepEqual(m('tcp.flags & 0x12'), ['?', ['&', 'tcp.flags', 18]]);
  assert.deepEqual(m(''), 'true');
});

test('sets: commas optional, ranges with .., addresses', () => {
  assert.deepEqual(m('tcp.dstport in {80 443}'), ['in', 'tcp.dstport', [80, 443]]);
  assert.deepEqual(m('tcp.dstport in {80, 443, 8000..8080}'), ['in', 'tcp.dstport', [80, 443, [8000, 8080]]]);
  assert.deepEqual(m('ip.ttl in {1..5,9}'), ['in', 'ip.ttl', [[1, 5], 9]]);
  assert.deepEqual(m('ip.src in {198.18.0.1, 198.19.0.0/16}'), ['in', 'ip.src', ['ipv4:198.18.0.1', 'ipv4:198.19.0.0/16']]);
  assert.deepEqual(m('ip.ttl in {(1 + 1)}'), ['in', 'ip.ttl', [['+', 1, 1]]]);
});

test('literals: decimal, hex, IPv4, CIDR, IPv6, MAC', () => {
  assert.deepEqual(x('0x1F'), 31);
  assert.deepEqual(x('4294967295'), 4294967295);
  assert.deepEqual(x('198.18.0.0/15'), 'ipv4:198.18.0.0/15');
  assert.deepEqual(x('2001:db8::1'), `ipv6:${[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].join('.')}`);
  assert.deepEqual(x('::1'), `ipv6:${[...new Array(15).fill(0), 1].join('.')}`);
  assert.deepEqual(x('fe80::/10'), `ipv6:${[0xfe, 0x80, ...new Array(14).fill(0)].join('.')}/10`);
  assert.deepEqual(x('02:00:5e:10:00:01'), 'mac:2.0.94.16.0.1');
  assert.deepEqual(x('AA:BB:CC:DD:EE:FF'), 'mac:170.187.204.221.238.255');
  assert.deepEqual(x('::ffff:198.18.0.1'), `ipv6:${[...new Array(10).fill(0), 255, 255, 198, 18, 0, 1].join('.')}`);
});

test('parseIpv6 accepts the RFC 4291 forms and refuses the rest', () => {
  assert.ok(parseIpv6('1:2:3:4:5:6:7:8'));
  assert.ok(parseIpv6('::'));
  assert.ok(parseIpv6('2001:db8::'));
  for (const bad of ['1:2:3:4:5:6:7', '1::2::3', '12345::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7::8', ':1', 'g::1', '::1.2.3.256']) {
    assert.equal(parseIpv6(bad), undefined, bad);
  }
});

test('tokens carry positions in the whole text when lexing a part of it', () => {
  const text = 'xx ip.ttl == 5 yy';
  const toks = tokenize(text, 3, 14);
  assert.deepEqual(toks.map((t) => [t.kind, t.span.start, t.span.end]), [['ident', 3, 9], ['op', 10, 12], ['num', 13, 14], ['eof', 14, 14]]);
});

test('the one-line form: match, =>, actions', () => {
  const r = parseRuleText('icmp.type == 0 => set ip.ttl = random(1, ip.ttl), set ip.id = 7, pass');
  assert.deepEqual(shape(r.match), ['==', 'icmp.type', 0]);
  assert.deepEqual(r.actions.map((a) => (a.kind === 'set' ? [a.field.name, eshape(a.value)] : a.kind)), [
    ['ip.ttl', ['random', 1, 'ip.ttl']], ['ip.id', 7], 'pass',
  ]);
  assert.deepEqual(parseRuleText('=> drop').match, { kind: 'true' });
  // Spaces are optional between tokens.
  assert.deepEqual(shape(parseRuleText('ip.ttl==1&&eth.src==aa:bb:cc:dd:ee:ff=>drop').match),
    ['and', ['==', 'ip.ttl', 1], ['==', 'eth.src', 'mac:170.187.204.221.238.255']]);
  assert.deepEqual(parseRuleText('tcp=>set ip.ttl=ip.ttl-1,pass').actions.map((a) => a.kind), ['set', 'pass']);
  const s = parseRuleText('tcp => set tcp.window_size_value = 0').actions[0]!;
  assert.deepEqual(s.span, { start: 7, end: 36 });
});

test('rules print back to text that parses to the same rule', () => {
  const texts = [
    'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)',
    'tcp.flags & 18 == 18 or not udp and ip.ttl in {1, 5..10} => drop',
    '(tcp or udp) and not ip.dst == 198.18.0.0/15 => pass',
    'ipv6.src == 2001:db8::1 and ipv6.hlim < 3 => set ipv6.hlim = 64, set ipv6.flow = 74565',
    'tcp.dstport == 80 => set tcp.window_size_value = (tcp.window_size_value - 1) * 2 >> 1, set ip.dsfield.dscp = 46',
    'eth.src == 02:00:00:00:00:01 => set eth.dst = ff:ff:ff:ff:ff:ff',
    '=> set ip.ttl = max(ip.ttl - 10, 1)',
    'tcp.dstport - (tcp.srcport - 1) == 1 => drop',
  ];
  for (const text of texts) {
    const once = rule(text);
    const printed = formatRule(once);
    assert.equal(printed, text, 'printed form is the canonical one');
    const twice = rule(printed);
    assert.deepEqual(shape(twice.match), shape(once.match));
    assert.equal(formatRule(twice), printed);
  }
});

test('formatCond and formatExpr parenthesize only where precedence needs it', () => {
  assert.equal(formatCond(parseMatchAt('(tcp and udp) or ip')), 'tcp and udp or ip');
  assert.equal(formatCond(parseMatchAt('tcp and (udp or ip)')), 'tcp and (udp or ip)');
  assert.equal(formatCond(parseMatchAt('not (tcp and udp)')), 'not (tcp and udp)');
  assert.equal(formatExpr(parseExprAt('1 - (2 - 3)')), '1 - (2 - 3)');
  assert.equal(formatExpr(parseExprAt('(1 - 2) - 3')), '1 - 2 - 3');
  assert.equal(formatExpr(parseExprAt('(1 | 2) & 3')), '(1 | 2) & 3');
  assert.equal(formatExpr(parseExprAt('2001:db8:0:0:1:0:0:1')), '2001:db8::1:0:0:1');
});
