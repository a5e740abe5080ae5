/**
 * The library's functions that need no kernel: parseRules, compile, build and replay, as a caller
 * uses them from 'netmangle', and the errors they throw.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { build, compile, CompileError, loadRulesText, parseRules, replay, RuleError, UsageError } from 'netmangle';
import { readElf } from '../../src/elf/index.js';
import { buildPacket } from '../helpers/packets.js';
import { pcapGlobalHeader, pcapRecord } from '../helpers/pcap.js';

const ping = (seq: number) => buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2', ttl: 64 }, l4: { kind: 'icmp', type: 8, seq } }).frame;

test('parseRules: several one-line rules for one target make one group, triggers on each, names numbered', () => {
  const set = parseRules(['icmp => drop', 'tcp => pass'], { dev: 'eth0', hook: 'xdp', netns: '/proc/1/ns/net' }, { every: 3, name: 'r' });
  assert.equal(set.groups.length, 1);
  const g = set.groups[0]!;
  assert.deepEqual([g.dev, g.hook, g.netns], ['eth0', 'xdp', '/proc/1/ns/net']);
  assert.deepEqual(g.rules.map((r) => [r.name, r.every]), [['r-1', 3], ['r-2', 3]]);
  assert.throws(() => parseRules([], { dev: 'eth0', hook: 'xdp' }), (e: unknown) => e instanceof UsageError && e.message === 'no rules given');
  assert.throws(() => parseRules('icmp => drop', { dev: 'eth0', hook: 'xdp', netns: 'a/b' }), /^UsageError: netns "a\/b" is not a valid namespace name$/);
  assert.throws(() => parseRules('icmp => drop', { dev: 'eth0', hook: 'xdp' }, { perConnection: true }), /^UsageError: perConnection counts packets per connection for first, after and every, and none is given$/);
  assert.throws(() => parseRules('icmp.type = 8 => drop', { dev: 'eth0', hook: 'xdp' }), (e: unknown) => e instanceof RuleError && e.column === 11 && e.exitCode === 2);
});

test('compile: one program per group, the seed given or the file\'s; delay is refused', () => {
  const set = loadRulesText('seed: 42\nrules:\n  - { dev: a, hook: xdp, rule: "icmp => drop" }\n  - { dev: b, hook: egress, rule: "tcp => pass" }\n', 'rules.yaml');
  const progs = compile(set);
  assert.deepEqual(progs.map((p) => [p.dev, p.hook, p.kind, p.seed]), [['a', 'xdp', 'xdp', 42], ['b', 'egress', 'sched_cls', 42]]);
  assert.ok(progs.every((p) => p.insns.length > 2));
  assert.equal(compile(set, undefined, { seed: 9 })[0]!.seed, 9);
  assert.throws(() => compile(set, { dev: 'x', hook: 'xdp' } as never), /^UsageError: a rule set names its own interfaces and hooks/);
  assert.throws(() => compile(set, undefined, { first: 1 } as never), /^UsageError: trigger option "first" applies to one-line rules/);
  assert.throws(() => compile('icmp => delay 5ms', { dev: 'eth0', hook: 'egress' }), CompileError);
});

test('build: an ELF object with one program section per hook; sections tcx on request', () => {
  const bytes = build(['icmp => drop'], { dev: 'eth0', hook: 'ingress' }, { seed: 1 });
  const elf = readElf(bytes);
  assert.ok(elf.sections.some((s) => s.name === 'tc'));
  assert.ok(elf.sections.some((s) => s.name === '.maps'));
  const tcx = readElf(build('icmp => drop', { dev: 'eth0', hook: 'egress' }, { sections: 'tcx' }));
  assert.ok(tcx.sections.some((s) => s.name === 'tcx/egress'));
  assert.throws(() => build('icmp => drop', { dev: 'eth0', hook: 'egress' }, { sections: 'bpf' as 'tc' }), /^UsageError: sections "bpf": must be tc or tcx$/);
});

test('replay: a capture through one-line rules, offline, with per-rule counts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-api-'));
  try {
    const input = join(dir, 'in.pcap');
    writeFileSync(input, Buffer.concat([pcapGlobalHeader(), ...[1, 2, 3, 4].map((seq, i) => pcapRecord(ping(seq), i))]));
    const output = join(dir, 'out.pcap');
    const s = await replay({ rules: 'icmp.type == 8 => drop', hook: 'xdp', input, output, every: 2, seed: 3 });
    assert.equal(s.packetsIn, 4);
    assert.equal(s.packetsOut, 2);
    assert.equal(s.rules[0]!.matched, 4);
    assert.equal(s.rules[0]!.dropped, 2);
    assert.ok(readFileSync(output).length > 24);
    await assert.rejects(replay({ rules: 'icmp => drop', input, output }), /^UsageError: one-line rules to replay need hook/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
