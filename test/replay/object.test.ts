/**
 * `netmangle replay OBJ.o`: a program from a BPF object replayed offline. A `netmangle build`
 * object gives exactly what replaying its rules gives (it seeds itself from .rodata as the
 * rules' replay seeds its state); a clang program's maps and global data (.rodata, .data, .bss,
 * with their initial bytes) work in the VM as in the kernel; verdicts are counted and acted on;
 * the VM's refusal of a helper it lacks reaches the user as one line; the command line's
 * choices and errors. Kernel comparisons run under kernelTest; the rest needs no privileges.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Assembler, R0, R1, R2, R3, R8, imm } from '../../src/bpf/index.js';
import { compileGroup } from '../../src/compiler/index.js';
import { buildObject, buildObjectFromGroups } from '../../src/elf/build.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseObject } from '../../src/elf/object.js';
import { createPcapWriter, readAllPackets } from '../../src/pcap/index.js';
import {
  hookForProgram, isDropVerdict, replayCapture, replayObject, verdictName, type ReplayEngine, type ReplaySummary,
} from '../../src/replay/index.js';
import type { Hook } from '../../src/rules/ast.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { shapes } from '../compiler/shapes.js';
import { compileC, have } from '../elf/tools.js';
import { inCI, kernelTest } from '../helpers/kernel.js';
import { buildPacket } from '../helpers/packets.js';

const NETMANGLE = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'nm-replay-obj-'));
  dirs.push(d);
  return d;
}

/** Every packet shape four times over, then 40 echo replies of various TTLs and 40 TCP ACKs: a capture at `path`. */
async function mixedCapture(path: string): Promise<Uint8Array[]> {
  const w = createPcapWriter(path);
  const frames: Uint8Array[] = [];
  for (let round = 0; round < 4; round++) for (const [, p] of shapes()) frames.push(p.frame);
  for (let i = 0; i < 40; i++) {
    frames.push(buildPacket({ l3: { kind: 'ipv4', ttl: [1, 2, 64, 255][i % 4]!, id: i }, l4: { kind: 'icmp', type: 0, ident: 9, seq: i } }).frame);
    frames.push(buildPacket({ l3: { kind: 'ipv4', id: i }, l4: { kind: 'tcp', flags: 0x010, seq: 1000 * i } }).frame);
  }
  frames.forEach((f, i) => w.write({ data: f, tsSec: 1_700_000_000 + i, tsNsec: 1000 * i }));
  await w.close();
  return frames;
}

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(NETMANGLE, args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Skips (outside CI) or fails (under CI) when clang cannot build BPF objects here. */
function clangMissing(): string | undefined {
  if (!have('clang')) return 'needs clang';
  if (!existsSync('/usr/include/bpf/bpf_helpers.h')) return 'needs libbpf-dev (bpf/bpf_helpers.h)';
  return undefined;
}

function clangTest(name: string, fn: () => Promise<void>): void {
  const why = clangMissing();
  if (why && !inCI) {
    test(name, { skip: why }, () => {});
    return;
  }
  test(name, async () => {
    if (why) throw new Error(`${why} (CI=true, so this fails instead of skipping)`);
    await fn();
  });
}

// ---------------------------------------------------------------- netmangle build objects

const TTL_RULE = 'icmp.type == 0 and ip.ttl > 0 => set ip.ttl = random(1, ip.ttl)';
const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';
const BUILT_CASES: Array<{ rule: string; hook: Hook; probability?: number; every?: number }> = [
  { rule: TTL_RULE, hook: 'xdp', probability: 0.5 },
  { rule: PSH_RULE, hook: 'egress', probability: 0.3 },
  { rule: 'udp => drop', hook: 'ingress', every: 3 },
];

/** Replays the capture through the rules and through the object `netmangle build` makes of them: both outputs' bytes. */
async function builtAgainstRules(dir: string, c: (typeof BUILT_CASES)[number], engine: ReplayEngine, seed: number): Promise<{ rules: Buffer; object: Buffer; r: ReplaySummary; o: ReplaySummary }> {
  const groups = parseRuleLine(c.rule, { dev: 'v0', hook: c.hook, probability: c.probability, every: c.every }).groups;
  const objPath = join(dir, `${c.hook}.o`);
  writeFileSync(objPath, buildObjectFromGroups(groups, seed).bytes);
  const object = parseObject(readFileSync(objPath), objPath);
  const input = join(dir, 'in.pcap');
  const r = await replayCapture({ groups, seed, engine, input, output: join(dir, `rules-${c.hook}-${engine}.pcap`) });
  // The object's own seed is in .rodata; replayObject's seed (the VM's bpf_get_prandom_u32) is deliberately another.
  const o = await replayObject({ object, program: object.programs[0]!.name, hook: c.hook, seed: seed + 1, engine, input, output: join(dir, `obj-${c.hook}-${engine}.pcap`) });
  return { rules: readFileSync(r.output), object: readFileSync(o.output), r, o };
}

for (const engine of ['jit', 'interp'] as const) {
  test(`replay of a netmangle build object equals replay of its rules with the same seed (${engine})`, async () => {
    const dir = tempDir();
    await mixedCapture(join(dir, 'in.pcap'));
    for (const c of BUILT_CASES) {
      const { rules, object, r, o } = await builtAgainstRules(dir, c, engine, 1234);
      assert.ok(r.changed + r.dropped > 5, `${c.rule}: the rules did something (${r.changed} changed, ${r.dropped} dropped)`);
      assert.ok(rules.equals(object), `${c.rule}: object output differs from the rules' output`);
      assert.deepEqual([o.packetsIn, o.packetsOut, o.changed, o.dropped], [r.packetsIn, r.packetsOut, r.changed, r.dropped]);
      assert.equal(o.program?.seen, r.rules[0]!.seen);
      assert.equal(o.program?.dropped, r.dropped);
      assert.equal(o.program?.callsPrandom, false, 'netmangle programs draw from their own generator');
      assert.deepEqual(o.rules, []);
    }
    // Another seed in the object gives other decisions: the seed really travels in .rodata.
    const a = await builtAgainstRules(dir, BUILT_CASES[0]!, engine, 1234);
    const b = await builtAgainstRules(dir, BUILT_CASES[0]!, engine, 99);
    assert.ok(!a.object.equals(b.object), 'seeds 1234 and 99 gave the same output');
  });
}

kernelTest('replay of a netmangle build object with --engine kernel equals replay of its rules', async () => {
  const dir = tempDir();
  await mixedCapture(join(dir, 'in.pcap'));
  for (const c of BUILT_CASES) {
    const { rules, object, o } = await builtAgainstRules(dir, c, 'kernel', 77);
    const vm = await builtAgainstRules(dir, c, 'jit', 77);
    assert.ok(rules.equals(object), `${c.rule}: kernel object output differs from the kernel rules' output`);
    assert.ok(object.equals(vm.object), `${c.rule}: kernel and JIT outputs of the object differ`);
    assert.equal(o.program?.cpu, 0, 'pinned to CPU 0, whose seeding the VM models');
  }
});

// ---------------------------------------------------------------- clang objects: maps and globals

const GLOBALS_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} per_len SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

const volatile __u8 mark_byte = 0x5a;
__u32 pad_var = 7;
__u32 step = 3;
__u32 total;

SEC("xdp")
int globals(struct xdp_md *ctx)
{
	__u8 *d = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u32 zero = 0, key;
	__u64 one = 1, count, *v;

	if (d + 14 > end)
		return XDP_PASS;
	total += step;
	key = (__u32)(end - d) & 15;
	v = bpf_map_lookup_elem(&per_len, &key);
	if (v) {
		*v += 1;
		count = *v;
	} else {
		bpf_map_update_elem(&per_len, &key, &one, BPF_ANY);
		count = 1;
	}
	v = bpf_map_lookup_elem(&seen, &zero);
	if (!v)
		return XDP_ABORTED;
	*v += 1;
	d[0] = mark_byte;
	d[1] = total;
	d[2] = step;
	d[3] = pad_var;
	d[4] = *v;
	d[5] = count;
	if ((total / step) % 5 == 0)
		return XDP_DROP;
	if ((total / step) % 7 == 0)
		return XDP_TX;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
`;

let globalsObject: { path: string; cleanup(): void } | undefined;
function globalsObjectPath(): string {
  globalsObject ??= compileC(GLOBALS_C, 'globals');
  return globalsObject.path;
}
after(() => globalsObject?.cleanup());

/** What GLOBALS_C leaves in packet i (1-based) of `frames`, and its verdict. */
function globalsExpected(frames: readonly Uint8Array[]): Array<{ frame: Uint8Array; verdict: 'pass' | 'drop' | 'tx' }> {
  const perLen = new Map<number, number>();
  return frames.map((f, k) => {
    const i = k + 1;
    const key = f.length & 15;
    perLen.set(key, (perLen.get(key) ?? 0) + 1);
    const out = Uint8Array.from(f);
    out.set([0x5a, (3 * i) & 0xff, 3, 7, i & 0xff, perLen.get(key)! & 0xff], 0);
    return { frame: out, verdict: i % 5 === 0 ? 'drop' : i % 7 === 0 ? 'tx' : 'pass' };
  });
}

async function globalsReplay(engine: ReplayEngine, dir: string): Promise<{ summary: ReplaySummary; frames: Uint8Array[] }> {
  const path = globalsObjectPath();
  const frames = await mixedCapture(join(dir, 'in.pcap'));
  const object = parseObject(readFileSync(path), path);
  const summary = await replayObject({ object, program: 'globals', hook: 'xdp', seed: 1, engine, input: join(dir, 'in.pcap'), output: join(dir, `out-${engine}.pcapng`) });
  return { summary, frames };
}

for (const engine of ['jit', 'interp'] as const) {
  clangTest(`a clang program's hash and per-CPU maps, .rodata, .data (two variables) and .bss work in the VM, its verdicts drop and bounce (${engine})`, async () => {
    const dir = tempDir();
    const { summary, frames } = await globalsReplay(engine, dir);
    const want = globalsExpected(frames);
    const { packets } = await readAllPackets(join(dir, `out-${engine}.pcapng`));
    const leaving = want.filter((w) => w.verdict !== 'drop');
    assert.equal(packets.length, leaving.length);
    packets.forEach((p, k) => {
      assert.deepEqual(p.data, leaving[k]!.frame, `packet ${k} of the output`);
      // d[0..5] is the destination MAC: the only field that changes.
      const tx = leaving[k]!.verdict === 'tx' ? ', XDP_TX' : '';
      assert.match(p.comment ?? '', new RegExp(`^globals: eth\\.dst [0-9a-f:]{17}→5a:[0-9a-f:]{14}${tx}$`));
    });
    const n = frames.length;
    const drops = Math.floor(n / 5);
    const tx = Math.floor(n / 7) - Math.floor(n / 35);
    assert.deepEqual(summary.program?.verdicts, { XDP_DROP: drops, XDP_PASS: n - drops - tx, XDP_TX: tx });
    assert.deepEqual([summary.packetsIn, summary.packetsOut, summary.dropped, summary.program?.dropped, summary.program?.seen], [n, n - drops, drops, drops, n]);
    assert.equal(summary.program?.callsPrandom, false);
  });
}

kernelTest('the clang program with maps and globals gives the kernel\'s bytes and verdicts in the VM', async (t) => {
  const why = clangMissing();
  if (why) {
    if (inCI) throw new Error(why);
    t.skip(why);
    return;
  }
  const dir = tempDir();
  const vm = await globalsReplay('jit', dir);
  const kernel = await globalsReplay('kernel', dir);
  assert.deepEqual(readFileSync(join(dir, 'out-kernel.pcapng')), readFileSync(join(dir, 'out-jit.pcapng')));
  assert.deepEqual(kernel.summary.program?.verdicts, vm.summary.program?.verdicts);
});

// ---------------------------------------------------------------- choices and refusals

test('hookForProgram: the section names the hook, --hook must agree, a tc section needs --hook', () => {
  const xdp = { name: 'p', section: 'xdp', type: 'xdp' as const, flags: 0 };
  const tc = { name: 'q', section: 'tc', type: 'sched_cls' as const, flags: 0 };
  const tcx = { name: 'r', section: 'tcx/egress', type: 'sched_cls' as const, flags: 0 };
  assert.equal(hookForProgram(xdp, undefined), 'xdp');
  assert.equal(hookForProgram(xdp, 'xdp'), 'xdp');
  assert.throws(() => hookForProgram(xdp, 'egress'), /is an xdp program; --hook egress needs a tc program/);
  assert.throws(() => hookForProgram(tc, undefined), /--hook ingress or --hook egress/);
  assert.equal(hookForProgram(tc, 'ingress'), 'ingress');
  assert.throws(() => hookForProgram(tc, 'xdp'), /--hook xdp needs an xdp program/);
  assert.equal(hookForProgram(tcx, undefined), 'egress');
  assert.throws(() => hookForProgram(tcx, 'ingress'), /is for tc egress/);
});

test('verdicts: names and which ones take the packet away', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 9].map((v) => verdictName('xdp', v)), ['XDP_ABORTED', 'XDP_DROP', 'XDP_PASS', 'XDP_TX', 'XDP_REDIRECT', '9']);
  assert.deepEqual([0, 1, 2, 3, 4, 9].map((v) => isDropVerdict('xdp', v)), [true, true, false, false, false, true]);
  assert.deepEqual([-1, 0, 2, 4, 7, 8].map((v) => verdictName('egress', v)), ['TC_ACT_UNSPEC', 'TC_ACT_OK', 'TC_ACT_SHOT', 'TC_ACT_STOLEN', 'TC_ACT_REDIRECT', 'TC_ACT_TRAP']);
  assert.deepEqual([-1, 0, 2, 4, 7, 8].map((v) => isDropVerdict('ingress', v)), [false, false, true, true, false, true]);
});

const NO_HELPER_C = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc")
int uses_hash(struct __sk_buff *skb)
{
	skb->mark = bpf_get_hash_recalc(skb);
	return 0;
}
char _license[] SEC("license") = "GPL";
`;

clangTest('a program calling a helper the VM lacks: one line naming the helper and what to do, exit 2, no output written', async () => {
  const built = compileC(NO_HELPER_C, 'nohelper');
  try {
    const dir = tempDir();
    await mixedCapture(join(dir, 'in.pcap'));
    const out = join(dir, 'out.pcap');
    const r = cli(['replay', built.path, join(dir, 'in.pcap'), '-o', out, '--hook', 'ingress']);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^netmangle: .*nohelper\.o: program uses_hash cannot run in the VM: insn \d+ .*calls bpf_get_hash_recalc, which the VM does not implement; replay it with --engine kernel \(needs root\)$/);
    assert.equal(existsSync(out), false);
  } finally {
    built.cleanup();
  }
});

clangTest('netmangle replay OBJ.o: summary names the program, --json has its counts, option errors are one-line usage errors', async () => {
  const dir = tempDir();
  const frames = await mixedCapture(join(dir, 'in.pcap'));
  const obj = globalsObjectPath();
  const input = join(dir, 'in.pcap');
  const text = cli(['replay', obj, input, '-o', join(dir, 'a.pcap')]);
  assert.equal(text.status, 0, text.stderr);
  const lines = text.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^program\s+hook\s+seen\s+changed\s+dropped$/);
  const n = frames.length, drops = Math.floor(n / 5);
  assert.match(lines[1]!, new RegExp(`^globals \\(section xdp\\)\\s+xdp\\s+${n}\\s+${n - drops}\\s+${drops}$`));
  assert.match(lines[2]!, /^verdicts: XDP_DROP \d+, XDP_PASS \d+, XDP_TX \d+$/);
  assert.equal(lines[3], `${n} packets in, ${n - drops} out (${n - drops} changed), ${drops} dropped; engine jit`);

  const json = cli(['replay', obj, input, '-o', join(dir, 'b.pcap'), '--json', '--engine', 'interp', '--seed', '5']);
  assert.equal(json.status, 0, json.stderr);
  const s = JSON.parse(json.stdout) as ReplaySummary & { seedChosen: boolean };
  assert.equal(s.program?.name, 'globals');
  assert.equal(s.program?.section, 'xdp');
  assert.equal(s.engine, 'interp');
  assert.equal(s.seed, 5);
  assert.equal(s.seedChosen, false);
  assert.deepEqual(readFileSync(join(dir, 'a.pcap')), readFileSync(join(dir, 'b.pcap')));

  const errors: Array<[string[], RegExp]> = [
    [['--hook', 'egress'], /globals\.o has no sched_cls program/],
    [['--section', 'globals', '--hook', 'ingress'], /program globals \(section xdp\) is an xdp program; --hook ingress needs a tc program/],
    [['--section', 'tc'], /has no section or program named tc/],
    [['--dev', 'eth0'], /--dev applies to rules; .* is a BPF object/],
    [['--probability', '0.5'], /--probability applies to rules/],
    [['--seed', 'x'], /--seed x: must be an integer/],
  ];
  for (const [extra, re] of errors) {
    const r = cli(['replay', obj, input, '-o', join(dir, 'c.pcap'), ...extra]);
    assert.equal(r.status, 2, `${extra.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr.split('\n')[0]!, re);
  }
  const rulesWithSection = cli(['replay', 'udp => drop', input, '-o', join(dir, 'd.pcap'), '--hook', 'xdp', '--section', 'xdp']);
  assert.equal(rulesWithSection.status, 2);
  assert.match(rulesWithSection.stderr, /--section chooses a program of a BPF object/);
});

test('a program that faults in the VM is reported as the program\'s error on its packet, not as a capture that cannot be read', async () => {
  // Reads r8 (never written) once the frame is longer than 14 bytes: the VM stops at run time.
  const a = new Assembler().ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R0, R2).alu64('add', R0, imm(15)).jmp('jgt', R0, R3, 'out');
  a.mov64(R0, R8).exit().label('out').movImm(R0, -1).exit();
  const code = a.assemble();
  const base = compileGroup(parseRuleLine('ip => pass', { dev: 'x', hook: 'egress' }).groups[0]!, { seed: 1, lookupField, selfSeed: true });
  const built = buildObject([{ ...base, insns: code.insns, mapRefs: code.mapRefs, maps: [] }]);
  const dir = tempDir();
  const obj = join(dir, 'faulty.o');
  writeFileSync(obj, built.bytes);
  await mixedCapture(join(dir, 'in.pcap'));
  const r = cli(['replay', obj, join(dir, 'in.pcap'), '-o', join(dir, 'out.pcap'), '--hook', 'egress']);
  assert.equal(r.status, 1, r.stderr);
  const first = r.stderr.split('\n')[0]!;
  assert.doesNotMatch(r.stderr, /cannot read/);
  assert.match(first, /^netmangle: .*faulty\.o: program nm_egress stopped in the VM on packet 1: insn 5 \(r0 = r8\): reads r8, which holds nothing/);
});
