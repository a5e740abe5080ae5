/**
 * `netmangle replay` on captures built from the crafted packet shapes: what leaves (dropped
 * gone, changed as the reference model says, timestamps kept), pcapng comments, the summary,
 * link-type conversion, the choice of hooks, the command line and its errors. The JIT and the
 * interpreter need no privileges; the kernel engine's agreement is tested under kernelTest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPcapWriter, readAllPackets, LINKTYPE_LINUX_SLL } from '../../src/pcap/index.js';
import { replayCapture, selectGroups, type ReplayEngine, type ReplaySummary } from '../../src/replay/index.js';
import { parseRuleLine } from '../../src/rules/load.js';
import type { Hook, RuleGroup } from '../../src/rules/ast.js';
import { lookupField } from '../../src/rules/catalog.js';
import { checksumsValid, decode, expectedAfterSets } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { shapes } from '../compiler/shapes.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

function withDir<T>(fn: (dir: string) => Promise<T> | T): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'nm-replay-'));
  return Promise.resolve(fn(dir)).finally(() => rmSync(dir, { recursive: true, force: true }));
}

/** Every packet shape, three times over, at 1 ms steps from a fixed time (microsecond pcap). */
async function shapesCapture(path: string, opts: { nanosecond?: boolean } = {}): Promise<Array<{ frame: Uint8Array; tsSec: number; tsNsec: number }>> {
  const w = createPcapWriter(path, { nanosecond: opts.nanosecond });
  const out: Array<{ frame: Uint8Array; tsSec: number; tsNsec: number }> = [];
  for (let round = 0; round < 3; round++) {
    for (const [, p] of shapes()) {
      const i = out.length;
      const rec = { frame: p.frame, tsSec: 1_700_000_000 + Math.floor(i / 1000), tsNsec: (i % 1000) * 1_000_000 + (opts.nanosecond ? 7 : 0) };
      w.write({ data: rec.frame, tsSec: rec.tsSec, tsNsec: rec.tsNsec });
      out.push(rec);
    }
  }
  await w.close();
  return out;
}

const one = (text: string, hook: Hook, extra: { probability?: number; every?: number; name?: string } = {}): RuleGroup[] =>
  parseRuleLine(text, { dev: 'replay', hook, ...extra }).groups;

async function replay(dir: string, groups: RuleGroup[], engine: ReplayEngine, out: string, seed = 7): Promise<ReplaySummary> {
  return replayCapture({ groups, seed, engine, input: join(dir, 'in.pcap'), output: join(dir, out) });
}

test('replay: drop removes exactly the matching packets, others leave byte for byte with their timestamps', async () => {
  await withDir(async (dir) => {
    const input = await shapesCapture(join(dir, 'in.pcap'));
    const s = await replay(dir, one('udp => drop', 'xdp'), 'jit', 'out.pcap');
    const { packets } = await readAllPackets(join(dir, 'out.pcap'));
    const kept = input.filter((p) => decode(p.frame).layers.udp === undefined);
    assert.equal(packets.length, kept.length);
    packets.forEach((p, i) => {
      assert.deepEqual(p.data, kept[i]!.frame);
      assert.deepEqual([p.tsSec, p.tsNsec], [kept[i]!.tsSec, kept[i]!.tsNsec]);
    });
    assert.equal(s.packetsIn, input.length);
    assert.equal(s.dropped, input.length - kept.length);
    assert.equal(s.changed, 0);
    assert.deepEqual(s.rules.map((r) => [r.name, r.hook, r.seen, r.matched, r.changed, r.dropped]), [['rule-1', 'xdp', input.length, s.dropped, 0, s.dropped]]);
  });
});

test('replay: a set changes the packets the reference model says, checksums fixed, with the JIT and the interpreter alike', async () => {
  await withDir(async (dir) => {
    const input = await shapesCapture(join(dir, 'in.pcap'));
    const rule = 'ip => set ip.ttl = 7';
    const a = await replay(dir, one(rule, 'egress'), 'jit', 'jit.pcap');
    const b = await replay(dir, one(rule, 'egress'), 'interp', 'interp.pcap');
    assert.deepEqual(readFileSync(join(dir, 'jit.pcap')), readFileSync(join(dir, 'interp.pcap')));
    assert.deepEqual({ ...a, engine: 'x', output: 'x' }, { ...b, engine: 'x', output: 'x' });
    const { packets } = await readAllPackets(join(dir, 'jit.pcap'));
    const all = shapes();
    let changed = 0;
    let notRun = 0;
    packets.forEach((p, i) => {
      const [name, built] = all[i % all.length]!;
      const tcSees = !(built.frame.length < 34 && built.frame[12] === 0x08 && built.frame[13] === 0) && !(built.frame.length < 54 && built.frame[12] === 0x86);
      const want = tcSees ? expectedAfterSets(built, [{ field: lookupField('ip.ttl')!, value: 7 }]) : built.frame;
      if (!tcSees) notRun++;
      assert.deepEqual(p.data, want, `${name}`);
      if (!Buffer.from(want).equals(Buffer.from(built.frame))) changed++;
    });
    assert.equal(packets.length, input.length);
    assert.ok(changed > 20, `${changed} packets changed`);
    assert.equal(a.changed, changed);
    assert.equal(a.rules[0]!.changed, changed);
    assert.equal(a.notRun.cutIpHeader, notRun, 'frames no tc hook can see pass untouched');
  });
});

test('replay: pcapng output comments each changed packet with the rule and the fields, and nothing else', async () => {
  await withDir(async (dir) => {
    await shapesCapture(join(dir, 'in.pcap'));
    const groups = one('tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1', 'egress', { name: 'psh-1-in-2', every: 2 });
    const s = await replay(dir, groups, 'jit', 'out.pcapng');
    assert.equal(s.format, 'pcapng');
    const { info, packets } = await readAllPackets(join(dir, 'out.pcapng'));
    assert.equal(info.format, 'pcapng');
    const { packets: input } = await readAllPackets(join(dir, 'in.pcap'));
    let commented = 0;
    packets.forEach((p, i) => {
      const same = Buffer.from(p.data).equals(Buffer.from(input[i]!.data));
      if (same) {
        assert.equal(p.comment, undefined);
        return;
      }
      commented++;
      assert.match(p.comment ?? '', /^psh-1-in-2: tcp\.flags\.push 0→1, tcp\.checksum 0x[0-9a-f]{4}→0x[0-9a-f]{4}$/);
      assert.equal(p.comment, `psh-1-in-2: tcp.flags.push 0→1, tcp.checksum 0x${hex16(input[i]!.data, p.data)}`);
    });
    assert.ok(commented >= 4, `${commented} commented`);
    assert.equal(commented, s.changed);
    assert.equal(s.rules[0]!.acted * 1, Math.floor(s.rules[0]!.matched / 2));
  });
});

/** "1c2e→0x142e": the TCP checksum before and after, located by the frame's own headers. */
function hex16(before: Uint8Array, after: Uint8Array): string {
  let l3 = 14;
  while (((before[l3 - 2]! << 8) | before[l3 - 1]!) === 0x8100 || ((before[l3 - 2]! << 8) | before[l3 - 1]!) === 0x88a8) l3 += 4;
  const type = (before[l3 - 2]! << 8) | before[l3 - 1]!;
  let l4 = type === 0x0800 ? l3 + (before[l3]! & 0xf) * 4 : l3 + 40;
  if (type === 0x86dd) {
    let nxt = before[l3 + 6]!;
    while (nxt === 0 || nxt === 43 || nxt === 60) {
      nxt = before[l4]!;
      l4 += (before[l4 + 1]! + 1) * 8;
    }
  }
  const w = (f: Uint8Array) => ((f[l4 + 16]! << 8) | f[l4 + 17]!).toString(16).padStart(4, '0');
  return `${w(before)}→0x${w(after)}`;
}

test('replay: the same seed gives the same output, another seed another one (probability rules)', async () => {
  await withDir(async (dir) => {
    await shapesCapture(join(dir, 'in.pcap'));
    const groups = one('ip or ipv6 => set ip.ttl = random(1, 255), set ipv6.hlim = random(1, 255)', 'xdp', { probability: 0.5 });
    const a = await replay(dir, groups, 'jit', 'a.pcap', 11);
    await replay(dir, groups, 'interp', 'b.pcap', 11);
    await replay(dir, groups, 'jit', 'c.pcap', 12);
    assert.deepEqual(readFileSync(join(dir, 'a.pcap')), readFileSync(join(dir, 'b.pcap')));
    assert.notDeepEqual(readFileSync(join(dir, 'a.pcap')), readFileSync(join(dir, 'c.pcap')));
    const r = a.rules[0]!;
    assert.ok(r.acted > r.matched * 0.25 && r.acted < r.matched * 0.75, `acted ${r.acted} of ${r.matched}`);
  });
});

test('replay: Linux cooked (SLL) captures are replayed as Ethernet frames, nanosecond timestamps kept', async () => {
  await withDir(async (dir) => {
    const frame = shapes().find(([n]) => n === 'ipv4 icmp echo reply')![1].frame;
    const sll = new Uint8Array(16 + frame.length - 14);
    sll[1] = 0; // PACKET_HOST
    sll[3] = 1; // ARPHRD_ETHER
    sll[5] = 6;
    sll.set(frame.subarray(6, 12), 6);
    sll[14] = 0x08;
    sll.set(frame.subarray(14), 16);
    const w = createPcapWriter(join(dir, 'in.pcap'), { linkType: LINKTYPE_LINUX_SLL, nanosecond: true });
    w.write({ data: sll, tsSec: 5, tsNsec: 123_456_789 });
    await w.close();
    const s = await replay(dir, one('icmp.type == 0 => set ip.ttl = 1', 'xdp'), 'jit', 'out.pcap');
    assert.equal(s.changed, 1);
    const { info, packets } = await readAllPackets(join(dir, 'out.pcap'));
    assert.equal(info.linkType, 1);
    assert.equal(info.nanosecond, true);
    assert.deepEqual([packets[0]!.tsSec, packets[0]!.tsNsec], [5, 123_456_789]);
    assert.equal(packets[0]!.data[22], 1);
    assert.deepEqual(packets[0]!.data.subarray(6, 12), frame.subarray(6, 12));
    assert.equal(checksumsValid(packets[0]!.data).ipv4, true);
  });
});

test('replay: xdp then ingress; a packet dropped at XDP never reaches tc ingress', async () => {
  await withDir(async (dir) => {
    const input = await shapesCapture(join(dir, 'in.pcap'));
    writeFileSync(join(dir, 'rules.yaml'), [
      'dev: eth0',
      'rules:',
      '  - name: late',
      '    hook: ingress',
      '    rule: ip => set ip.ttl = 3',
      '  - name: early',
      '    hook: xdp',
      '    rule: tcp => drop',
    ].join('\n'));
    const { loadRulesFile } = await import('../../src/rules/load.js');
    const groups = selectGroups(loadRulesFile(join(dir, 'rules.yaml')).groups);
    assert.deepEqual(groups.map((g) => g.hook), ['xdp', 'ingress']);
    const s = await replayCapture({ groups, seed: 1, engine: 'jit', input: join(dir, 'in.pcap'), output: join(dir, 'out.pcap') });
    const early = s.rules.find((r) => r.name === 'early')!;
    const late = s.rules.find((r) => r.name === 'late')!;
    assert.equal(early.seen, input.length);
    assert.ok(early.dropped > 0);
    assert.equal(late.seen + s.notRun.cutIpHeader, input.length - early.dropped);
    const { packets } = await readAllPackets(join(dir, 'out.pcap'));
    assert.equal(packets.length, input.length - early.dropped);
    assert.ok(packets.every((p) => !(p.data[12] === 0x08 && p.data[13] === 0 && p.data.length >= 34) || p.data[22] === 3));
  });
});

test('selectGroups: one interface, one direction, or a clear error', () => {
  const g = (dev: string, hook: Hook, netns?: string): RuleGroup => ({ dev, hook, netns, rules: [] });
  assert.deepEqual(selectGroups([g('a', 'ingress'), g('a', 'xdp')]).map((x) => x.hook), ['xdp', 'ingress']);
  assert.throws(() => selectGroups([g('a', 'egress'), g('a', 'xdp')]), /egress and for the receive side/);
  assert.deepEqual(selectGroups([g('a', 'egress'), g('a', 'xdp')], { hook: 'egress' }).map((x) => x.hook), ['egress']);
  assert.throws(() => selectGroups([g('a', 'egress'), g('b', 'egress')]), /2 interfaces \(a, b\)/);
  assert.deepEqual(selectGroups([g('a', 'egress'), g('b', 'egress')], { dev: 'b' }).map((x) => x.dev), ['b']);
  assert.throws(() => selectGroups([g('a', 'egress')], { hook: 'xdp' }), (err: Error & { hint?: string }) => /no rules for hook xdp/.test(err.message) && /a egress/.test(err.hint ?? ''));
  assert.throws(() => selectGroups([g('a', 'xdp', 'n1'), g('a', 'xdp', 'n2')]), /n1\/a, n2\/a/);
});

test('replay: a capture cut in the middle of a record: every packet before it is written, then a clear error', async () => {
  await withDir(async (dir) => {
    const input = await shapesCapture(join(dir, 'in.pcap'));
    // A record header announcing 100 bytes, followed by 10.
    const rec = Buffer.alloc(26);
    rec.writeUInt32LE(100, 8);
    rec.writeUInt32LE(100, 12);
    appendFileSync(join(dir, 'in.pcap'), rec);
    await assert.rejects(replay(dir, one('ip => set ip.ttl = 9', 'xdp'), 'jit', 'out.pcap'), (err: Error) => err.name === 'CaptureError');
    const { packets } = await readAllPackets(join(dir, 'out.pcap'));
    assert.equal(packets.length, input.length);
  });
});

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(bin, args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('netmangle replay: table, --json, and one-line errors for what a user gets wrong', async () => {
  await withDir(async (dir) => {
    const input = await shapesCapture(join(dir, 'in.pcap'));
    const inp = join(dir, 'in.pcap');
    const ok = cli(['replay', 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)', inp, '--hook', 'xdp', '-o', join(dir, 'o.pcapng'), '--seed', '3']);
    assert.equal(ok.status, 0, ok.stderr);
    const lines = ok.stdout.trim().split('\n');
    assert.match(lines[0]!, /^rule\s+hook\s+seen\s+matched\s+changed\s+dropped$/);
    assert.match(lines[1]!, new RegExp(`^rule-1\\s+xdp\\s+${input.length}\\s+3\\s+3\\s+0$`));
    assert.match(ok.stdout, new RegExp(`${input.length} packets in, ${input.length} out \\(3 changed\\), 0 dropped; engine jit, seed 3\\n`));
    const js = cli(['replay', 'udp => drop', inp, '--hook', 'egress', '-o', join(dir, 'o.pcap'), '--json', '--seed', '1', '--engine', 'interp']);
    assert.equal(js.status, 0, js.stderr);
    const summary = JSON.parse(js.stdout);
    assert.equal(summary.engine, 'interp');
    assert.equal(summary.packetsIn, input.length);
    assert.equal(summary.packetsOut + summary.dropped, input.length);
    assert.ok(summary.dropped > 0);
    const random = cli(['replay', 'udp => drop', inp, '--hook', 'egress', '-o', join(dir, 'o.pcap')]);
    assert.match(random.stdout, /seed \d+ \(chosen at random; pass --seed to repeat\)/);

    const errors: Array<[string[], RegExp]> = [
      [['replay', 'udp => drop', inp, '-o', join(dir, 'x.pcap')], /one-line rule needs --hook/],
      [['replay', 'udp => drop', inp, '--hook', 'xdp'], /needs -o OUT/],
      [['replay', 'udp => drop', inp, '--hook', 'xdp', '-o', inp], /is the input capture/],
      [['replay', 'udp => drop', join(dir, 'missing.pcap'), '--hook', 'xdp', '-o', join(dir, 'x.pcap')], /no capture .*missing\.pcap/],
      [['replay', 'udp => drop', inp, '--hook', 'xdp', '-o', join(dir, 'x.pcap'), '--engine', 'bpf'], /--engine bpf: must be jit, interp or kernel/],
      [['replay', 'udp => drop', inp, '--hook', 'up', '-o', join(dir, 'x.pcap')], /--hook up: must be xdp, ingress or egress/],
      [['replay', 'udp => drop', inp, '--hook', 'xdp', '--dev', 'eth0', '-o', join(dir, 'x.pcap')], /--dev and --netns choose among the interfaces of a rules file/],
      [['replay', 'udp => dorp', inp, '--hook', 'xdp', '-o', join(dir, 'x.pcap')], /dorp/],
      [['replay', join(dir, 'no-such-rules.yaml'), inp, '-o', join(dir, 'x.pcap')], /no rules file/],
    ];
    for (const [args, re] of errors) {
      const r = cli(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.match(r.stderr, /^netmangle: /);
      assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
    }
  });
});

kernelTest('netmangle replay --engine kernel writes the same capture as --engine jit (the article\'s two rules, probability included)', async () => {
  await withDir(async (dir) => {
    await shapesCapture(join(dir, 'in.pcap'));
    const inp = join(dir, 'in.pcap');
    const cases: Array<[string, string[]]> = [
      ['icmp.type == 0 => set ip.ttl = random(1, ip.ttl)', ['--hook', 'xdp']],
      ['tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1', ['--hook', 'egress', '--probability', '0.5']],
      ['ip or ipv6 => set ip.dsfield.ecn = 3, set ipv6.tclass.ecn = 3', ['--hook', 'ingress', '--every', '2']],
    ];
    for (const [rule, opts] of cases) {
      const outs = ['jit', 'kernel'].map((engine) => {
        const out = join(dir, `${engine}.pcapng`);
        const r = cli(['replay', rule, inp, ...opts, '-o', out, '--seed', '5', '--engine', engine, '--json']);
        assert.equal(r.status, 0, r.stderr);
        return { file: readFileSync(out), summary: JSON.parse(r.stdout) as ReplaySummary };
      });
      assert.ok(outs[0]!.summary.changed > 0, `${rule}: nothing changed`);
      assert.deepEqual(outs[1]!.file, outs[0]!.file, rule);
      assert.deepEqual(outs[1]!.summary.rules, outs[0]!.summary.rules);
    }
  });
});

test('netmangle replay runs without privileges with jit and interp, and says why kernel cannot', async () => {
  await withDir(async (dir) => {
    await shapesCapture(join(dir, 'in.pcap'));
    chmodSync(dir, 0o777);
    chmodSync(join(dir, 'in.pcap'), 0o644);
    // As root, drop to nobody for the run (setpriv, util-linux); otherwise we are unprivileged already.
    const asUser = (args: string[]) => {
      const argv = process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', bin, ...args] : [bin, ...args];
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const outs: Buffer[] = [];
    for (const engine of ['jit', 'interp']) {
      const r = asUser(['replay', 'ip => set ip.ttl = random(1, 9)', join(dir, 'in.pcap'), '--hook', 'egress', '-o', join(dir, `${engine}.pcap`), '--seed', '4', '--engine', engine]);
      assert.equal(r.status, 0, r.stderr);
      outs.push(readFileSync(join(dir, `${engine}.pcap`)));
    }
    assert.deepEqual(outs[0], outs[1]);
    const k = asUser(['replay', 'ip => drop', join(dir, 'in.pcap'), '--hook', 'egress', '-o', join(dir, 'k.pcap'), '--engine', 'kernel']);
    assert.equal(k.status, 2);
    assert.match(k.stderr, /^netmangle: --engine kernel needs root/);
  });
});

test('netmangle replay takes the trigger options of run: --first, --after, --per-connection, --for', async () => {
  await withDir(async (dir) => {
    // Two TCP connections, 10 data segments each, interleaved, 10 ms apart.
    const inp = join(dir, 'in.pcap');
    const w = createPcapWriter(inp, { linkType: 1 });
    for (let i = 0; i < 20; i++) {
      const f = Buffer.alloc(54);
      f.writeUInt16BE(0x0800, 12);
      f[14] = 0x45; f.writeUInt16BE(40, 16); f[22] = 64; f[23] = 6;
      Buffer.from([198, 18, 0, 1, 198, 18, 0, 2]).copy(f, 26);
      f.writeUInt16BE(40000 + (i % 2), 34); f.writeUInt16BE(5201, 36); f.writeUInt32BE(i, 38);
      f[46] = 0x50; f[47] = 0x18;
      w.write({ data: f, tsSec: 1000, tsNsec: i * 10_000_000 });
    }
    w.close();
    const changed = (extra: string[]): number => {
      const r = cli(['replay', 'tcp.flags.push => set ip.dsfield.dscp = 46', inp, '--hook', 'egress', '-o', join(dir, 'o.pcap'), '--seed', '1', '--json', ...extra]);
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout).changed as number;
    };
    assert.equal(changed([]), 20);
    assert.equal(changed(['--first', '1']), 1);
    assert.equal(changed(['--first', '1', '--per-connection']), 2);
    assert.equal(changed(['--after', '15']), 5);
    assert.equal(changed(['--for', '95ms']), 10, 'the window opens at the first match and counts the capture\'s clock');
    const file = join(dir, 'r.yaml');
    writeFileSync(file, 'rules:\n  - { name: a, dev: x, hook: egress, match: tcp, set: { ip.ttl: 9 } }\n');
    const refused = cli(['replay', file, inp, '-o', join(dir, 'o.pcap'), '--first', '1']);
    assert.equal(refused.status, 2);
    assert.match(refused.stderr, /--first applies to a one-line rule/);
  });
});
