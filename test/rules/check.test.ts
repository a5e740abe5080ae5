import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatCond, formatRule } from '../../src/rules/format.js';
import { RuleError, renderRuleError } from '../../src/rules/errors.js';
import { UsageError } from '../../src/errors.js';
import { assertRuleError, rule } from './helpers.js';

test('the caret example: an unknown field with the nearest real name', () => {
  const err = assertRuleError('icmp.type == 0 => set ip.tll = 1', /^unknown field "ip\.tll" \(did you mean ip\.ttl\?\)$/, 'ip.tll');
  assert.ok(err instanceof UsageError);
  assert.equal(err.message, [
    'unknown field "ip.tll" (did you mean ip.ttl?)',
    '  icmp.type == 0 => set ip.tll = 1',
    '                        ^^^^^^',
  ].join('\n'));
});

test('unknown fields in the match and with no near name', () => {
  assertRuleError('tcp.dstprot == 80 => drop', /did you mean tcp\.dstport/, 'tcp.dstprot');
  const err = assertRuleError('foo.bar == 1 => drop', /^unknown field "foo\.bar"$/, 'foo.bar');
  assert.match(err.hint ?? '', /fields\.md/);
});

test('values that do not fit the field name its range', () => {
  assertRuleError('tcp => set tcp.flags.push = 2', /2 does not fit tcp\.flags\.push, a one-bit flag \(0 or 1\)/, '2', { nth: 0 });
  assertRuleError('ip => set ip.ttl = 256', /256 does not fit ip\.ttl, which holds 0 to 255/, '256');
  assertRuleError('ip => set ip.dsfield.dscp = 64', /which holds 0 to 63/, '64');
  assertRuleError('ip => set ip.hdr_len = 22', /counts bytes in steps of 4/, '22');
  assertRuleError('ip => set ip.hdr_len = 64', /which holds 0 to 60/, '64');
  assertRuleError('ip => set ip.ttl = random(1, 300)', /random\(1, 300\) can exceed ip\.ttl, which holds 0 to 255/, 'random(1, 300)');
  assertRuleError('ip => set ip.ttl = min(300, 400)', /does not fit ip\.ttl/, 'min(300, 400)');
  const never = assertRuleError('ip.ttl == 300 => drop', /300 does not fit ip\.ttl/, '300');
  assert.match(never.hint ?? '', /always false/);
  assert.match(assertRuleError('ip.ttl != 300 => drop', /does not fit/, '300').hint ?? '', /always true/);
  assertRuleError('tcp.port in {80, 70000} => drop', /70000 does not fit tcp\.port/, '70000');
});

test('values that fit are accepted, including at the edges', () => {
  assert.equal(rule('tcp => set tcp.flags.push = 1').actions.length, 1);
  rule('ip => set ip.ttl = 255, set ip.hdr_len = 60, set ip.frag_offset = 0x1fff');
  rule('ipv6 => set ipv6.flow = 0xfffff, set ipv6.tclass = 255');
  rule('tcp => set tcp.seq = 0xffffffff');
});

test('fields the hook cannot see: VLAN tags at tc', () => {
  const e1 = assertRuleError('vlan.id == 5 => drop', /vlan\.id cannot be read here: at the tc ingress hook/, 'vlan.id', { hook: 'ingress' });
  assert.match(e1.hint ?? '', /--hook xdp/);
  assertRuleError('tcp => set vlan.priority = 1', /vlan\.priority cannot be set here: at the tc egress hook/, 'vlan.priority', { hook: 'egress' });
  assertRuleError('vlan and tcp => drop', /"vlan" cannot be tested here/, 'vlan', { hook: 'egress' });
  assertRuleError('ip.ttl == vlan.id => drop', /vlan\.id cannot be read/, 'vlan.id', { hook: 'ingress' });
  const ok = rule('vlan.id == 5 => set vlan.priority = 3', 'xdp');
  assert.equal(formatRule(ok), 'vlan.id == 5 => set vlan.priority = 3');
});

test('types: addresses against numbers, CIDR only with == and !=, sets of one kind', () => {
  assertRuleError('ip.src == 5 => drop', /ip\.src is an IPv4 address, but 5 is a number/, '5');
  assertRuleError('5 == ip.src => drop', /ip\.src is an IPv4 address, but 5 is a number/, '5');
  assertRuleError('ip.ttl == 198.18.0.1 => drop', /ip\.ttl is a number, but 198\.18\.0\.1 is an IPv4 address/, '198.18.0.1');
  assertRuleError('ipv6.src == 198.18.0.1 => drop', /IPv6 address, but 198\.18\.0\.1 is an IPv4 address/, '198.18.0.1');
  assertRuleError('ip.dst < 198.18.0.0/15 => drop', /addresses compare only with == and !=/, 'ip.dst < 198.18.0.0/15');
  assertRuleError('ip.src in {198.18.0.1, 5} => drop', /5 is a number, but ip\.src is an IPv4 address/, '5');
  assertRuleError('ip.src in {198.18.0.1..198.18.0.9} => drop', /ranges work on numbers; for addresses use a CIDR block/, '198.18.0.1..198.18.0.9');
  assertRuleError('ip.src + 1 == 2 => drop', /arithmetic works on numbers, and ip\.src is an IPv4 address/, 'ip.src');
  assertRuleError('ip.src => drop', /ip\.src is an IPv4 address, not a test/, 'ip.src');
  assertRuleError('ipv6.src == ipv6.dst => drop', /can be compared with an address, not with another field/, 'ipv6.dst');
  assertRuleError('198.18.0.1 == 198.18.0.1 => drop', /two constant addresses/, '198.18.0.1 == 198.18.0.1');
  assertRuleError('ip => set ip.src = 198.18.0.0/15', /one address, not a CIDR block/, '198.18.0.0/15');
  assertRuleError('ip => set ip.src = 1', /ip\.src is an IPv4 address, but 1 is a number/, '1', { nth: 0 });
  assertRuleError('eth => set eth.src = 2001:db8::1', /MAC address, but 2001:db8::1 is an IPv6 address/, '2001:db8::1');
  assertRuleError('tcp => set tcp.dstport = 198.18.0.1', /tcp\.dstport is a number/, '198.18.0.1');
  assertRuleError('ip => set ip.ttl = min(ip.ttl, 198.18.0.1)', /min\(\) takes numbers, and 198\.18\.0\.1 is an IPv4 address/, '198.18.0.1');
  rule('ip.src == 198.18.0.0/15 and ip.dst != 198.19.0.1 => set ip.dst = ip.src');
  rule('ipv6.dst == 2001:db8::/32 => set ipv6.src = ipv6.dst, set ipv6.dst = 2001:db8::2');
  rule('eth.dst == ff:ff:ff:ff:ff:ff => set eth.src = eth.dst');
});

test('match-only fields: compared directly with constants, never set or computed with', () => {
  assertRuleError('tcp.port + 1 == 3 => drop', /tcp\.port means tcp\.srcport or tcp\.dstport and has no single value/, 'tcp.port');
  assertRuleError('tcp.port == tcp.srcport => drop', /compare it with a constant/, 'tcp.srcport');
  assertRuleError('tcp.srcport == tcp.port => drop', /compare it with a constant/, 'tcp.srcport');
  assertRuleError('ip => set ip.addr = 198.18.0.1', /ip\.addr means ip\.src or ip\.dst and can only be matched/, 'ip.addr');
  assertRuleError('udp.port => drop', /has no single value/, 'udp.port');
  assertRuleError('ip => set frame.len = 3', /frame\.len is the length of the packet and cannot be set/, 'frame.len');
  assert.equal(formatCond(rule('ip.addr != 198.18.0.1 => drop').match), 'ip.addr != 198.18.0.1');
});

test('in on match-only or address fields becomes an or of tests the compiler knows', () => {
  assert.equal(formatCond(rule('tcp.port in {80, 8000..8080} => drop').match), 'tcp.srcport in {80, 8000..8080} or tcp.dstport in {80, 8000..8080}');
  assert.equal(formatCond(rule('ip.addr in {198.18.0.1, 198.19.0.0/16} => drop').match), 'ip.addr == 198.18.0.1 or ip.addr == 198.19.0.0/16');
  assert.equal(formatCond(rule('ipv6.src in {2001:db8::1} => drop').match), 'ipv6.src == 2001:db8::1');
  assert.equal(formatCond(rule('tcp.dstport in {80} => drop').match), 'tcp.dstport in {80}');
});

test('constants fold where trivial, with 64-bit unsigned arithmetic', () => {
  const r = rule('ip.ttl == 2 * 3 + 1 => set ip.ttl = min(10, 3) << 2, set ip.id = 0xffff & 0x1234');
  assert.equal(formatRule(r), 'ip.ttl == 7 => set ip.ttl = 12, set ip.id = 4660');
  assert.equal(formatRule(rule('1 + 1 == 2 and tcp => drop')), 'tcp => drop');
  assert.equal(formatRule(rule('1 == 2 or tcp => drop')), 'tcp => drop');
  assert.equal(formatRule(rule('1 == 2 and tcp => drop')), 'not frame => drop');
  assert.equal(formatRule(rule('not (1 == 1) or udp => drop')), 'udp => drop');
  assert.equal(formatRule(rule('5 in {1..9} => drop')), '=> drop');
  assert.equal(formatRule(rule('ip => set ip.ttl = random(4, 4)')), 'ip => set ip.ttl = 4');
  // 1 - 2 wraps to 2^64 - 1, too large to fold exactly: left for the program, which truncates.
  assert.equal(formatRule(rule('ip => set ip.ttl = 1 - 2')), 'ip => set ip.ttl = 1 - 2');
  assert.equal(formatRule(rule('ip => set ip.ttl = ip.ttl - 1')), 'ip => set ip.ttl = ip.ttl - 1');
});

test('arithmetic errors: division by constant zero, shifts past 63, random bounds, random in a match', () => {
  assertRuleError('=> set ip.ttl = ip.ttl / 0', /^division by zero$/, '0');
  assertRuleError('=> set ip.ttl = ip.ttl % (1 - 1)', /^remainder by zero$/, '(1 - 1)'.slice(1, -1));
  assertRuleError('=> set ip.ttl = ip.ttl << 64', /the most is 63/, '64');
  assertRuleError('=> set ip.ttl = random(9, 3)', /the low bound comes first/, 'random(9, 3)');
  const err = assertRuleError('random(0, 9) < 3 => drop', /random\(\) is for values to set/, 'random(0, 9)');
  assert.match(err.hint ?? '', /probability/);
  assertRuleError('=> set ip.ttl = random(1)', /random takes two arguments/, 'random(1)');
  assertRuleError('=> set ip.ttl = min(1, 2, 3)', /min takes two arguments/, 'min(1, 2, 3)');
  assertRuleError('=> set ip.ttl = rand(1, 2)', /unknown function "rand"/, 'rand');
});

test('actions: one write per field and bit, verdict last, drop alone', () => {
  assertRuleError('tcp => set ip.ttl = 1, set ip.ttl = 2', /ip\.ttl is set twice in this rule/, 'ip.ttl', { nth: 1 });
  assertRuleError('tcp => set tcp.flags = 2, set tcp.flags.push = 1', /tcp\.flags\.push overlaps tcp\.flags/, 'tcp.flags.push');
  assertRuleError('ip => set ip.dsfield.ecn = 1, set ip.dsfield = 0', /ip\.dsfield overlaps ip\.dsfield\.ecn/, 'ip.dsfield', { nth: 1 });
  assertRuleError('tcp => set tcp.seq = 1, set tcp.seq_raw = 1', /overlaps tcp\.seq/, 'tcp.seq_raw');
  rule('tcp => set tcp.flags.push = 1, set tcp.flags.syn = 0, set tcp.hdr_len = 20');
  rule('ip => set ip.dsfield.dscp = 1, set ip.dsfield.ecn = 3, set ip.version = 4, set ip.hdr_len = 20');
  assertRuleError('tcp => set ip.ttl = 1, drop', /drop discards the packet/, 'drop');
  assertRuleError('tcp => drop, set ip.ttl = 1', /nothing can follow drop/, 'set ip.ttl = 1');
  assertRuleError('tcp => pass, drop', /nothing can follow pass/, 'drop');
  assert.deepEqual(rule('tcp => set ip.ttl = 1, pass').actions.map((a) => a.kind), ['set', 'pass']);
});

test('a checksum a rule sets is written last, so no other fix-up of that rule overwrites it', () => {
  const r = rule('tcp => set tcp.checksum = 0, set tcp.dstport = 81, set ip.checksum = 1, set ip.ttl = 9');
  assert.deepEqual(r.actions.map((a) => (a.kind === 'set' ? a.field.name : a.kind)), ['tcp.dstport', 'ip.ttl', 'tcp.checksum', 'ip.checksum']);
});

test('syntax errors point at the offending token', () => {
  assertRuleError('ip.ttl = 5 => drop', /"=" assigns; to compare, write "=="/, '=');
  assertRuleError('icmp.type == 0', /needs "=>"/, '', {});
  assertRuleError('tcp.port in {1000-2000} => drop', /written lo\.\.hi/, '-');
  assertRuleError('tcp == 5 => drop', /"tcp" is a protocol name/, 'tcp');
  assertRuleError('ip.ttl == tcp => drop', /"tcp" is a protocol name, not a value/, 'tcp', { nth: 0 });
  assertRuleError('ip.ttl < 010 => drop', /leading zero/, '010');
  assertRuleError('ip.ttl < 4294967296 => drop', /too large/, '4294967296');
  assertRuleError('ip.ttl < -1 => drop', /no negative numbers/, '-');
  assertRuleError('ip.ttl < 1 < 2 => drop', /comparisons do not chain/, '<', { nth: 1 });
  assertRuleError('ip.ttl in {} => drop', /at least one value/, '{}');
  assertRuleError('ip.ttl in {1, 2 => drop', /expected a value/, '=>');
  assertRuleError('ip.ttl in {9..1} => drop', /range 9\.\.1 is empty/, '9..1');
  assertRuleError('ip.src == 198.18.0.1/33 => drop', /prefix length \/33/, '/33');
  assertRuleError('ip.src == 198.18.0.256 => drop', /not a valid IPv4 address/, '198.18.0.256');
  assertRuleError('ipv6.src == 2001:db8:::1 => drop', /not a valid IPv6 or MAC address/, '2001:db8:::1');
  assertRuleError('ip.ttl == 1.2 => drop', /not a number or an IPv4 address/, '1.2');
  assertRuleError('ip.ttl == 12ab => drop', /"12ab" is not a number/, '12ab');
  assertRuleError('ip.ttl == 1 => drop drop', /expected "," between actions/, 'drop', { nth: 1 });
  assertRuleError('ip.ttl == 1 => ', /an action is missing/, '');
  assertRuleError('ip.ttl == 1 => set ip.ttl == 2', /set takes a single "="/, '==', { nth: 1 });
  assertRuleError('ip.ttl == 1 => ip.ttl = 2', /starts with "set"/, 'ip.ttl', { nth: 1 });
  assertRuleError('ip.ttl == 1 => set tcp = 2', /"tcp" is a protocol name; set one of its fields/, 'tcp');
  assertRuleError('ip.ttl == 1 => frobnicate', /expected an action/, 'frobnicate');
  assertRuleError('(ip.ttl == 1 => drop', /expected "\)"/, '=>');
  assertRuleError('ip.ttl == "x" => drop', /strings are not values/, '"');
  assertRuleError('ip.ttl == 1 $ => drop', /unexpected character "\$"/, '$');
  assertRuleError('tcp.flags.push and => drop', /expected a value/, '=>');
});

test('a caret at the end of the text is one column wide', () => {
  const err = assertRuleError('tcp and', /expected a value/, '');
  assert.equal(err.message.split('\n')[2], `  ${' '.repeat('tcp and'.length)}^`);
});

test('renderRuleError shows only the line of the error and a location prefix', () => {
  const text = 'tcp and\nip.tll == 1';
  const msg = renderRuleError('unknown field', text, { start: 8, end: 14 }, 'rules.yaml:7');
  assert.equal(msg, 'rules.yaml:7: unknown field\n  ip.tll == 1\n  ^^^^^^');
  const e = new RuleError('bad', 'a b', { start: 2, end: 3 }).at('f.yaml:3');
  assert.equal(e.message, 'f.yaml:3: bad\n  a b\n    ^');
  assert.equal(e.location, 'f.yaml:3');
});
