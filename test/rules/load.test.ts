import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadRulesFile, loadRulesText, parseRuleLine } from '../../src/rules/load.js';
import { RuleError } from '../../src/rules/errors.js';
import { formatRule } from '../../src/rules/format.js';
import { UsageError } from '../../src/errors.js';

const repo = (p: string): string => fileURLToPath(new URL(`../../../${p}`, import.meta.url));

/** Asserts that loading `yaml` fails with exactly this first message line (and returns the error). */
function assertFileError(yaml: string, firstLine: string | RegExp): UsageError {
  let caught: unknown;
  try {
    loadRulesText(yaml, 'rules.yaml');
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof UsageError, `expected a UsageError, got ${String(caught)}`);
  const line = caught.message.split('\n')[0]!;
  if (typeof firstLine === 'string') assert.equal(line, firstLine);
  else assert.match(line, firstLine);
  assert.equal(caught.exitCode, 2);
  return caught;
}

test('parseRuleLine: one group with the options applied', () => {
  const out = parseRuleLine('icmp.type == 0 => set ip.ttl = random(1, ip.ttl)', {
    dev: 'veth0', hook: 'egress', netns: 'lab', probability: '0.25', every: '4', seed: '7', name: 'pong',
  });
  assert.equal(out.seed, 7);
  assert.equal(out.groups.length, 1);
  const g = out.groups[0]!;
  assert.deepEqual([g.dev, g.hook, g.netns], ['veth0', 'egress', 'lab']);
  const r = g.rules[0]!;
  assert.deepEqual([r.name, r.probability, r.every, r.checksum], ['pong', 0.25, 4, 'fix']);
  assert.equal(r.text, 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)');
  const plain = parseRuleLine('tcp => drop', { dev: 'eth0', hook: 'xdp' });
  assert.equal(plain.seed, undefined);
  assert.equal(plain.groups[0]!.netns, undefined);
  assert.equal(plain.groups[0]!.rules[0]!.name, 'rule-1');
  assert.equal(plain.groups[0]!.rules[0]!.probability, undefined);
  assert.equal(parseRuleLine('tcp => drop', { dev: 'eth0', hook: 'xdp', probability: '5%' }).groups[0]!.rules[0]!.probability, 0.05);
  assert.equal(parseRuleLine('tcp => drop', { dev: 'eth0', hook: 'xdp', probability: 1 }).groups[0]!.rules[0]!.probability, 1);
  assert.equal(parseRuleLine('tcp => set tcp.checksum = 1', { dev: 'eth0', hook: 'xdp', checksum: 'keep' }).groups[0]!.rules[0]!.checksum, 'keep');
});

test('parseRuleLine: option errors say which option and what it takes', () => {
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ hook: 'xpd' }, /^--hook must be one of xdp, ingress, egress, not "xpd"$/],
    [{ dev: '' }, /^--dev must name a network interface$/],
    [{ dev: 'a-very-long-interface' }, /longer than the 15 bytes/],
    [{ dev: 'a/b' }, /not a valid interface name/],
    [{ netns: '../x' }, /--netns "..\/x" is not a valid namespace name/],
    [{ probability: '0' }, /^--probability must be a number greater than 0 and at most 1, not "0"$/],
    [{ probability: 1.5 }, /--probability must be a number greater than 0 and at most 1/],
    [{ probability: 'often' }, /--probability/],
    [{ every: '0' }, /^--every must be a whole number from 1 to 2147483647, not "0"$/],
    [{ every: '2.5' }, /--every/],
    [{ every: 3.5 }, /--every/],
    [{ seed: '-1' }, /^--seed must be a whole number/],
    [{ seed: 'abc' }, /--seed/],
    [{ seed: '4294967296' }, /^--seed must be a whole number from 0 to 4294967295/],
    [{ checksum: 'maybe' }, /^--checksum must be fix or keep/],
    [{ name: 'has space' }, /--name "has space" is not a valid rule name/],
  ];
  for (const [opts, msg] of bad) {
    assert.throws(() => parseRuleLine('tcp => drop', { dev: 'veth0', hook: 'xdp', ...opts } as never), (err: unknown) => {
      assert.ok(err instanceof UsageError && !(err instanceof RuleError), String(err));
      assert.match(err.message, msg);
      return true;
    });
  }
  assert.throws(() => parseRuleLine('tcp => drop', { dev: 'veth0', hook: 'xpd' }), (err: UsageError) => err.hint === 'did you mean xdp?');
  assert.throws(() => parseRuleLine('  ', { dev: 'veth0', hook: 'xdp' }), /^UsageError: the rule is empty$/);
  assert.equal(parseRuleLine('tcp => drop', { dev: 'veth0', hook: 'xdp', seed: '0x10' }).seed, 16);
});

test('the example file loads, grouped by (namespace, interface, hook) in file order', () => {
  const out = loadRulesFile(repo('examples/rules.yaml'));
  assert.equal(out.seed, 42);
  assert.deepEqual(out.groups.map((g) => [g.netns, g.dev, g.hook, g.rules.map((r) => r.name)]), [
    ['nm-lab-h1', 'eth0', 'egress', ['ttl-chaos', 'ecn-web', 'bad-dns-checksum', 'v6-hlim']],
    ['nm-lab-h1', 'eth0', 'xdp', ['drop-some-syns']],
  ]);
  const [chaos, web, dns] = out.groups[0]!.rules;
  assert.equal(chaos!.text, 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)');
  assert.equal(web!.probability, 0.1);
  assert.equal(web!.text, 'tcp.port in {80, 443, 8000..8080} and ip.dsfield.ecn != 0 => set ip.dsfield.ecn = 3, set tcp.flags.push = 0');
  assert.equal(dns!.checksum, 'keep');
  assert.equal(out.groups[1]!.rules[0]!.every, 3);
});

test('a rule from parts and the same rule in one line are the same rule', () => {
  const parts = loadRulesText([
    'rules:',
    '  - dev: veth0',
    '    hook: ingress',
    '    match: tcp.dstport == 80',
    '    set:',
    '      tcp.window_size_value: 0',
    '      ip.ttl: 1',
    '    action: pass',
  ].join('\n'), 'r.yaml').groups[0]!.rules[0]!;
  const line = parseRuleLine('tcp.dstport == 80 => set tcp.window_size_value = 0, set ip.ttl = 1, pass', { dev: 'veth0', hook: 'ingress' }).groups[0]!.rules[0]!;
  assert.equal(parts.text, line.text);
  assert.equal(formatRule(parts), formatRule(line));
  assert.deepEqual(parts.actions.map((a) => a.span), line.actions.map((a) => a.span));
});

test('a bare list of rules, file-wide defaults, names and checksum default', () => {
  const list = loadRulesText('- dev: a\n  hook: xdp\n  action: drop\n- dev: b\n  hook: xdp\n  rule: "=> pass"\n', 'l.yaml');
  assert.deepEqual(list.groups.map((g) => [g.dev, g.rules.map((r) => r.name)]), [['a', ['rule-1']], ['b', ['rule-2']]]);
  const defaults = loadRulesText('dev: d\nhook: egress\nnetns: n\nchecksum: keep\nrules:\n  - action: drop\n  - hook: ingress\n    checksum: fix\n    action: pass\n', 'd.yaml');
  assert.deepEqual(defaults.groups.map((g) => [g.netns, g.dev, g.hook, g.rules[0]!.checksum]), [['n', 'd', 'egress', 'keep'], ['n', 'd', 'ingress', 'fix']]);
  const everything = loadRulesText('dev: d\nhook: xdp\nrules:\n  - match: ""\n    action: drop\n', 'e.yaml');
  assert.equal(everything.groups[0]!.rules[0]!.match.kind, 'true');
  assert.equal(everything.groups[0]!.rules[0]!.text, '=> drop');
  const numbers = loadRulesText('dev: d\nhook: xdp\nrules:\n  - set:\n      ip.ttl: 0x10\n', 'n.yaml');
  assert.equal(formatRule(numbers.groups[0]!.rules[0]!), '=> set ip.ttl = 16');
});

test('schema errors carry the line and the path', () => {
  assertFileError('rules:\n  - name: a\n    dev: veth0\n    hook: xpd\n    action: drop\n', 'rules.yaml:4: rules[0].hook: must be one of xdp, ingress, egress');
  const unknown = assertFileError('rules:\n  - name: a\n    dev: veth0\n    hook: xdp\n    actoin: drop\n', 'rules.yaml:5: rules[0]: unknown key "actoin" (did you mean action?)');
  assert.match(unknown.hint ?? '', /keys of a rule: name, dev, hook/);
  assertFileError('sed: 1\nrules:\n  - dev: v\n    hook: xdp\n    action: drop\n', 'rules.yaml:1: unknown key "sed" (did you mean seed?)');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    probability: 1.5\n', 'rules.yaml:5: rules[0].probability: must be a number greater than 0 and at most 1');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    probability: 0\n', 'rules.yaml:5: rules[0].probability: must be a number greater than 0 and at most 1');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    every: 0\n', 'rules.yaml:5: rules[0].every: must be a whole number from 1 to 2147483647');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    every: 2.5\n', 'rules.yaml:5: rules[0].every: must be an integer');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: explode\n', 'rules.yaml:4: rules[0].action: must be one of drop, pass, duplicate [N], corrupt [BITS], truncate LEN, delay DURATION, reorder [by N], reject [with CODE]');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    checksum: later\n', 'rules.yaml:5: rules[0].checksum: must be one of fix, keep');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - set:\n      ip.ttl: [1]\n', 'rules.yaml:5: rules[0].set.ip.ttl: must be a string or integer');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - set: {}\n', 'rules.yaml:4: rules[0].set: is empty');
  assertFileError('seed: -1\ndev: v\nhook: xdp\nrules:\n  - action: drop\n', 'rules.yaml:1: seed: must be a whole number from 0 to 4294967295');
  assertFileError('seed: 4294967296\ndev: v\nhook: xdp\nrules:\n  - action: drop\n', 'rules.yaml:1: seed: must be a whole number from 0 to 4294967295');
  assertFileError('dev: v\n', 'rules.yaml:1: missing "rules"');
  assertFileError('dev: v\nrules: []\n', 'rules.yaml:2: rules: the list is empty');
  assertFileError('', 'rules.yaml: the file has no rules');
  assertFileError('- dev: a\n  hook: xdp\n  action: drop\n- dev: b\n  hooks: xdp\n', 'rules.yaml:5: rules[1]: unknown key "hooks" (did you mean hook?)');
});

test('errors the schema cannot see: missing dev or hook, actions, names, interface names', () => {
  assertFileError('hook: xdp\nrules:\n  - name: a\n    action: drop\n', 'rules.yaml:3: rules[0]: no dev');
  assertFileError('dev: v\nrules:\n  - name: a\n    action: drop\n', 'rules.yaml:3: rules[0]: no hook');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - match: tcp\n', 'rules.yaml:4: rules[0]: no action');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - rule: tcp => drop\n    match: tcp\n', 'rules.yaml:5: rules[0]: give either rule: or match/set/action, not both');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - name: a\n    action: drop\n  - name: a\n    action: pass\n', 'rules.yaml:6: rules[1].name: "a" is already the name of rules[0]');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - name: "a b"\n    action: drop\n', /^rules\.yaml:4: rules\[0\]\.name: "a b" is not a valid rule name$/);
  assertFileError('dev: abcdefghijklmnopq\nhook: xdp\nrules:\n  - action: drop\n', 'rules.yaml:1: dev: "abcdefghijklmnopq" is longer than the 15 bytes an interface name can have');
  assertFileError('hook: xdp\nrules:\n  - dev: a/b\n    action: drop\n', 'rules.yaml:3: rules[0].dev: "a/b" is not a valid interface name');
});

test('YAML syntax errors carry their line', () => {
  const e = assertFileError('dev: v\nhook: xdp\nrules:\n  - name: a\n   match: x\n', /^rules\.yaml:5: /);
  assert.match(e.hint ?? '', /not valid YAML/);
  assertFileError('dev: v\nhook: xdp\nrules:\n  - set:\n      ip.ttl: 1\n      ip.ttl: 2\n', 'rules.yaml:6: Map keys must be unique');
});

test('rule errors in a file: the line of the part, and the rule with a caret', () => {
  const unknown = assertFileError('dev: v\nhook: xdp\nrules:\n  - name: a\n    match: icmp.type == 0\n    set:\n      ip.ttl: 1\n      ip.tll: 2\n',
    'rules.yaml:8: unknown field "ip.tll" (did you mean ip.ttl?)');
  assert.ok(unknown instanceof RuleError);
  assert.deepEqual(unknown.message.split('\n').slice(1), [
    '  icmp.type == 0 => set ip.ttl = 1, set ip.tll = 2',
    '                                        ^^^^^^',
  ]);
  assert.equal(unknown.location, 'rules.yaml:8');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - match: icmp.tpye == 0\n    action: drop\n', 'rules.yaml:4: unknown field "icmp.tpye" (did you mean icmp.type?)');
  const fit = assertFileError('dev: v\nhook: xdp\nrules:\n  - match: tcp\n    set:\n      ip.ttl: 1\n      tcp.flags.push: 2\n',
    'rules.yaml:7: 2 does not fit tcp.flags.push, a one-bit flag (0 or 1)');
  assert.equal(fit.message.split('\n')[2], `  ${' '.repeat('tcp => set ip.ttl = 1, set tcp.flags.push = '.length)}^`);
  // A `|` block keeps its line breaks: the error is on the block's second line.
  assertFileError('dev: v\nhook: xdp\nrules:\n  - match: |\n      icmp.type == 0 and\n      ip.tll == 3\n    action: drop\n',
    'rules.yaml:6: unknown field "ip.tll" (did you mean ip.ttl?)');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - rule: tcp => set ip.tll = 1\n', 'rules.yaml:4: unknown field "ip.tll" (did you mean ip.ttl?)');
  assertFileError('dev: v\nhook: ingress\nrules:\n  - match: tcp\n    set:\n      vlan.id: 3\n', /^rules\.yaml:6: vlan\.id cannot be set here: at the tc ingress hook/);
  assertFileError('dev: v\nhook: xdp\nrules:\n  - set:\n      tcp: 1\n', 'rules.yaml:5: "tcp" is a protocol name; set one of its fields');
  // A value cannot smuggle in another action.
  assertFileError('dev: v\nhook: xdp\nrules:\n  - set:\n      ip.ttl: "1, drop"\n', 'rules.yaml:5: expected an operator or the end, found ","');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - match: tcp\n    set:\n      ip.ttl: 1\n    action: drop\n', 'rules.yaml:7: drop discards the packet, so the set actions before it would have no effect');
});

test('loadRulesFile reports a missing file in one line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-rules-'));
  try {
    assert.throws(() => loadRulesFile(join(dir, 'nope.yaml')), (err: UsageError) => {
      assert.ok(err instanceof UsageError);
      assert.equal(err.message, `cannot read rules file ${join(dir, 'nope.yaml')}: no such file`);
      return true;
    });
    const path = join(dir, 'ok.yaml');
    writeFileSync(path, 'dev: v\nhook: xdp\nrules:\n  - action: drop\n');
    assert.equal(loadRulesFile(path).groups[0]!.rules[0]!.actions[0]!.kind, 'drop');
    writeFileSync(path, 'dev: v\nhook: xdp\nrules:\n  - action: explode\n');
    assert.throws(() => loadRulesFile(path), (err: UsageError) => err.message.startsWith(`${path}:4: rules[0].action:`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a rules file takes a probability as a percentage too ("5%" = 0.05), and says so when it is neither', () => {
  const r = loadRulesText('dev: v\nhook: xdp\nrules:\n  - action: drop\n    probability: 5%\n  - action: pass\n    probability: "12.5 %"\n', 'rules.yaml');
  assert.deepEqual(r.groups[0]!.rules.map((x) => x.probability), [0.05, 0.125]);
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    probability: lots\n', 'rules.yaml:5: rules[0].probability: must be a number greater than 0 and at most 1, or a percentage, not "lots"');
  assertFileError('dev: v\nhook: xdp\nrules:\n  - action: drop\n    probability: 150%\n', 'rules.yaml:5: rules[0].probability: must be a number greater than 0 and at most 1, or a percentage, not "150%"');
});
