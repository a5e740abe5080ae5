/** `netmangle build --emit c` and `--emit asm`, and the build command itself. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LD_IMM64 } from '../../src/bpf/opcodes.js';
import { buildObjectFromGroups } from '../../src/elf/build.js';
import { emitC } from '../../src/elf/c.js';
import { objectListing } from '../../src/elf/listing.js';
import { loadObjectProgram } from '../../src/elf/load.js';
import { parseObject, readElf } from '../../src/elf/index.js';
import { testRun } from '../../src/kernel/index.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { onCpu } from '../compiler/harness.js';
import { kernelTest } from '../helpers/kernel.js';
import { icmpEchoReply, tcpSegment } from './packets.js';
import { clangArgs, run, toolTest } from './tools.js';

const NETMANGLE = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));

const CASES: Array<{ rule: string; hook: string; probability?: number; every?: number; packets: (i: number) => Uint8Array }> = [
  { rule: 'icmp.type == 0 and ip.ttl > 0 => set ip.ttl = random(1, ip.ttl)', hook: 'xdp', packets: (i) => icmpEchoReply(64, i) },
  {
    rule: 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1',
    hook: 'egress', probability: 0.25, packets: (i) => tcpSegment(i % 7 === 0 ? 0x02 : 0x10),
  },
  { rule: 'tcp.dstport == 5201 => set tcp.window_size_value = random(1, 100), set ip.ttl = 9', hook: 'ingress', every: 3, packets: (i) => tcpSegment(0x10, 20 + i) },
  { rule: 'ip.ttl < 30 => drop', hook: 'xdp', packets: (i) => (i % 2 ? tcpSegment(0x10, 10 + i) : icmpEchoReply(64, i)) },
];

function dirDo<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'nm-emit-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

toolTest('--emit c compiles with clang -O2 -target bpf into an object with the same sections, maps and seed', ['clang'], () => {
  dirDo((dir) => {
    for (const [n, c] of CASES.entries()) {
      const groups = parseRuleLine(c.rule, { dev: 'eth0', hook: c.hook, probability: c.probability, every: c.every }).groups;
      const built = buildObjectFromGroups(groups, 99);
      const source = emitC(built);
      assert.ok(source.includes(c.rule.replace(/\*\//g, '* /')), 'the rule text is in the source');
      const file = join(dir, `case${n}.c`);
      writeFileSync(file, source);
      run('clang', [...clangArgs(), '-Wall', '-Werror', '-c', file, '-o', join(dir, `case${n}.o`)]);
      const fromC = parseObject(new Uint8Array(readFileSync(join(dir, `case${n}.o`))));
      const ours = parseObject(built.bytes);
      assert.deepEqual(fromC.programs.map((p) => [p.name, p.section]), ours.programs.map((p) => [p.name, p.section]));
      for (const [name, m] of ours.maps) {
        const other = fromC.maps.get(name)!;
        assert.ok(other, `map ${name}`);
        assert.deepEqual([other.type, other.keySize, other.valueSize, other.maxEntries], [m.type, m.keySize, m.valueSize, m.maxEntries]);
      }
      assert.deepEqual(fromC.maps.get('.rodata')!.initial, ours.maps.get('.rodata')!.initial, 'the seed');
    }
  });
});

kernelTest('the C from --emit c, built by clang, agrees with the built object on crafted packets (test_run)', () => {
  dirDo((dir) => {
    for (const [n, c] of CASES.entries()) {
      const groups = parseRuleLine(c.rule, { dev: 'eth0', hook: c.hook, probability: c.probability, every: c.every }).groups;
      const built = buildObjectFromGroups(groups, 1000 + n);
      const file = join(dir, `case${n}.c`);
      writeFileSync(file, emitC(built));
      run('clang', [...clangArgs(), '-c', file, '-o', join(dir, `case${n}.o`)]);
      const symbol = built.programs[0]!.symbol;
      using fromC = loadObjectProgram(parseObject(new Uint8Array(readFileSync(join(dir, `case${n}.o`)))), symbol);
      using ours = loadObjectProgram(parseObject(built.bytes), symbol);
      const outcomes = new Set<string>();
      onCpu(0, () => {
        for (let i = 0; i < 120; i++) {
          const packet = c.packets(i);
          const a = testRun(ours.prog, { data: packet });
          const b = testRun(fromC.prog, { data: packet });
          assert.equal(b.retval, a.retval, `${c.rule}: packet ${i} verdict`);
          assert.deepEqual(b.data, a.data, `${c.rule}: packet ${i} bytes`);
          outcomes.add(`${a.retval}:${Buffer.from(a.data).toString('hex')}`);
        }
      });
      assert.ok(outcomes.size > 1, `${c.rule}: the packets meet different fates (${outcomes.size})`);
    }
  });
});

test('--emit asm lists every instruction under its section and symbol, with the rules and map names', () => {
  const groups = parseRuleLine(CASES[1]!.rule, { dev: 'eth0', hook: 'egress', probability: 0.25 }).groups;
  const built = buildObjectFromGroups(groups, 5);
  const text = objectListing(built);
  assert.match(text, /^; section tc, program nm_egress \(egress on eth0\), seed 5$/m);
  assert.ok(text.includes(`;   rule rule-1: ${CASES[1]!.rule}`));
  assert.match(text, /r1 = 0x0 ll\t; map nm_state/);
  assert.match(text, /= 0x0 ll\t; address of nm_seed \(\.rodata\)/);
  const slots = text.split('\n').filter((l) => /^\s+\d+:\t/.test(l));
  assert.equal(slots.length, built.programs[0]!.compiled.insns.length);
  const total = built.programs[0]!.compiled.insns.reduce((n, i) => n + (i.code === LD_IMM64 ? 2 : 1), 0);
  assert.equal(Number(/^\s+(\d+):/.exec(slots.at(-1)!)![1]) + 1 + (built.programs[0]!.compiled.insns.at(-1)!.code === LD_IMM64 ? 1 : 0), total);
});

test('netmangle build writes an object, prints C and asm, and refuses bad options', () => {
  dirDo((dir) => {
    const out = join(dir, 'ttl.o');
    const r = spawnSync(NETMANGLE, ['build', CASES[0]!.rule, '--hook', 'xdp', '--seed', '17', '-o', out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /wrote .*ttl\.o: nm_xdp \(section xdp\); seed 17/);
    assert.equal(readElf(new Uint8Array(readFileSync(out))).machine, 247);
    const c = spawnSync(NETMANGLE, ['build', CASES[0]!.rule, '--hook', 'xdp', '--seed', '17', '--emit', 'c'], { encoding: 'utf8' });
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stdout, /const volatile __u64 nm_seed = 17;/);
    assert.match(c.stdout, /SEC\("xdp"\)\nint nm_xdp\(struct xdp_md \*ctx\)/);
    const asm = spawnSync(NETMANGLE, ['build', CASES[0]!.rule, '--hook', 'xdp', '--emit', 'asm'], { encoding: 'utf8' });
    assert.equal(asm.status, 0, asm.stderr);
    assert.match(asm.stdout, /<nm_xdp>:/);
    const noOut = spawnSync(NETMANGLE, ['build', CASES[0]!.rule, '--hook', 'xdp'], { encoding: 'utf8' });
    assert.equal(noOut.status, 2);
    assert.match(noOut.stderr, /an object needs -o FILE/);
    const badEmit = spawnSync(NETMANGLE, ['build', CASES[0]!.rule, '--hook', 'xdp', '--emit', 'wasm'], { encoding: 'utf8' });
    assert.equal(badEmit.status, 2);
    assert.match(badEmit.stderr, /--emit wasm: must be obj, c or asm/);
  });
});
