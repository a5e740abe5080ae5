/**
 * The article's two C programs (the anchors in ../shared/anchors beside the repository), built
 * with clang and replayed offline: in the VM (JIT and interpreter) and in the kernel
 * (BPF_PROG_TEST_RUN) they do the same thing to every packet.
 *
 * Both draw from bpf_get_prandom_u32, which the VM seeds and the kernel does not, so the
 * engines may pick different packets; what is compared is what the programs promise for any
 * pick. xdp_ttl_pong: an echo reply leaves with a TTL in 1..original and a valid IPv4 header
 * checksum, and nothing else changes. tc_psh_egress: packets it leaves alone are untouched;
 * a picked packet differs in the PSH bit only, and its TCP checksum is left stale (the
 * article's shortcut, kept on purpose). Which packets each program may touch is modelled on its
 * C source, fixed offsets and all (a 20-byte IPv4 header assumed), not on what a correct
 * parser would say.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseObject } from '../../src/elf/object.js';
import { createPcapWriter, readAllPackets } from '../../src/pcap/index.js';
import { replayObject, type ReplayEngine, type ReplaySummary } from '../../src/replay/index.js';
import type { Hook } from '../../src/rules/ast.js';
import { clangArgs, have, run } from '../elf/tools.js';
import { inCI, kernelUnavailable } from '../helpers/kernel.js';
import { buildPacket, checksumsValid, type PacketSpec } from '../helpers/packets.js';

/** The repository's root; CI clones it with shared/ beside it. */
const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const ANCHORS = resolve(REPO, '..', 'shared', 'anchors');
const ANCHOR_NAMES = ['xdp_ttl_pong', 'tc_psh_egress'] as const;
type Anchor = (typeof ANCHOR_NAMES)[number];

function anchorsMissing(): string | undefined {
  for (const a of ANCHOR_NAMES) if (!existsSync(join(ANCHORS, `${a}.c`))) return `no ${a}.c in ${ANCHORS} (../shared/anchors beside the repository)`;
  if (!have('clang')) return 'needs clang';
  if (!existsSync('/usr/include/bpf/bpf_helpers.h')) return 'needs libbpf-dev (bpf/bpf_helpers.h)';
  return undefined;
}

/**
 * A test that needs the anchors built (and, with `kernel`, root and the kernel): skipped outside
 * CI when something is missing, failing under CI=true.
 */
function anchorTest(name: string, opts: { kernel?: boolean }, fn: () => Promise<void>): void {
  const why = anchorsMissing() ?? (opts.kernel ? kernelUnavailable() : undefined);
  if (why && !inCI) {
    test(name, { skip: why }, () => {});
    return;
  }
  test(name, { timeout: 120_000 }, async () => {
    if (why) throw new Error(`${why} (CI=true, so this fails instead of skipping)`);
    await fn();
  });
}

const work = mkdtempSync(join(tmpdir(), 'nm-replay-anchors-'));
after(() => rmSync(work, { recursive: true, force: true }));

const built = new Map<Anchor, string>();
/** clang -O2 -g -target bpf -I/usr/include/<multiarch> -c ANCHOR.c -o ANCHOR.o, once per anchor. */
function anchorObject(a: Anchor): string {
  let path = built.get(a);
  if (!path) {
    path = join(work, `${a}.o`);
    run('clang', [...clangArgs(), '-c', join(ANCHORS, `${a}.c`), '-o', path]);
    built.set(a, path);
  }
  return path;
}

async function writeCapture(name: string, frames: readonly Uint8Array[]): Promise<string> {
  const path = join(work, name);
  const w = createPcapWriter(path);
  frames.forEach((f, i) => w.write({ data: f, tsSec: 1_700_000_000 + i, tsNsec: 0 }));
  await w.close();
  return path;
}

async function replayAnchor(a: Anchor, hook: Hook, input: string, engine: ReplayEngine, seed: number, out: string): Promise<{ summary: ReplaySummary; packets: Uint8Array[]; comments: Array<string | undefined> }> {
  const path = anchorObject(a);
  const object = parseObject(readFileSync(path), path);
  const summary = await replayObject({ object, program: a, hook, seed, engine, input, output: join(work, out) });
  const { packets } = await readAllPackets(join(work, out));
  return { summary, packets: packets.map((p) => p.data), comments: packets.map((p) => p.comment) };
}

const frame = (spec: PacketSpec): Uint8Array => buildPacket(spec).frame;
const RECORD_ROUTE = Uint8Array.from([7, 7, 4, 198, 18, 0, 9, 1]);

/** Bytes where two equally long frames differ. */
function diffAt(a: Uint8Array, b: Uint8Array): number[] {
  assert.equal(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

// ---------------------------------------------------------------- xdp_ttl_pong

/** The C program's test, at its fixed offsets: an untagged IPv4 ICMP frame with type 0 at byte 34 and a TTL. */
function ttlPongActsOn(f: Uint8Array): boolean {
  return f.length >= 42 && f[12] === 0x08 && f[13] === 0x00 && f[23] === 1 && f[34] === 0 && f[22] !== 0;
}

function ttlCapture(): Uint8Array[] {
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 30; i++) {
    for (const ttl of [0, 1, 2, 3, 64, 128, 255]) {
      frames.push(frame({ l3: { kind: 'ipv4', ttl, id: i * 7 + ttl, src: '198.18.0.2', dst: '198.18.0.1' }, l4: { kind: 'icmp', type: 0, ident: 0x77, seq: i } }));
    }
    if (i % 3 === 0) {
      frames.push(frame({ l3: { kind: 'ipv4', ttl: 64 }, l4: { kind: 'icmp', type: 8, ident: 0x77, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv4', ttl: 64, options: RECORD_ROUTE }, l4: { kind: 'icmp', type: 0, seq: i } }));
      frames.push(frame({ eth: { vlans: [{ vid: 10 }] }, l3: { kind: 'ipv4', ttl: 64 }, l4: { kind: 'icmp', type: 0, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv6', hlim: 64 }, l4: { kind: 'icmpv6', type: 129, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv4', ttl: 64 }, l4: { kind: 'tcp', flags: 0x010, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv4', ttl: 64 }, l4: { kind: 'udp', dport: 53 } }));
      frames.push(frame({ l3: { kind: 'ipv4', ttl: 64 }, l4: { kind: 'icmp', type: 0, seq: i }, cut: 40 }));
    }
  }
  return frames;
}

/** Checks every packet against the program's promise; returns how many changed. */
function checkTtlPong(input: readonly Uint8Array[], r: { summary: ReplaySummary; packets: Uint8Array[] }, engine: string): number {
  assert.equal(r.packets.length, input.length, `${engine}: every packet leaves`);
  assert.deepEqual(r.summary.program?.verdicts, { XDP_PASS: input.length });
  let changed = 0;
  input.forEach((before, i) => {
    const after = r.packets[i]!;
    if (!ttlPongActsOn(before)) {
      assert.deepEqual(after, before, `${engine}: packet ${i} is not an echo reply the program reads, and must be untouched`);
      return;
    }
    assert.equal(checksumsValid(before).ipv4, true);
    const ttl = after[22]!;
    assert.ok(ttl >= 1 && ttl <= before[22]!, `${engine}: packet ${i}: TTL ${before[22]} became ${ttl}`);
    assert.equal(checksumsValid(after).ipv4, true, `${engine}: packet ${i}: IPv4 header checksum wrong after TTL ${before[22]}→${ttl}`);
    const where = diffAt(before, after);
    assert.ok(where.every((b) => b === 22 || b === 24 || b === 25), `${engine}: packet ${i}: bytes ${where} changed`);
    if (where.length > 0) changed++;
  });
  assert.equal(r.summary.changed, changed);
  // TTLs 2, 3, 64, 128 and 255, 30 each: about 124 change (a draw equal to the TTL leaves it).
  assert.ok(changed > 90 && changed <= 150, `${engine}: ${changed} changed`);
  const ttl255 = input.flatMap((f, i) => (ttlPongActsOn(f) && f[22] === 255 ? [r.packets[i]![22]!] : []));
  assert.ok(new Set(ttl255).size >= 10, `${engine}: TTL 255 became only ${[...new Set(ttl255)]}`);
  return changed;
}

anchorTest('xdp_ttl_pong replayed in the VM: every echo reply gets a TTL in 1..original with a valid header checksum, nothing else changes; JIT = interpreter', {}, async () => {
  const frames = ttlCapture();
  const input = await writeCapture('ttl.pcap', frames);
  const jit = await replayAnchor('xdp_ttl_pong', 'xdp', input, 'jit', 11, 'ttl-jit.pcapng');
  const interp = await replayAnchor('xdp_ttl_pong', 'xdp', input, 'interp', 11, 'ttl-interp.pcapng');
  checkTtlPong(frames, jit, 'jit');
  checkTtlPong(frames, interp, 'interp');
  assert.deepEqual(readFileSync(join(work, 'ttl-jit.pcapng')), readFileSync(join(work, 'ttl-interp.pcapng')));
  assert.equal(jit.summary.program?.callsPrandom, true);
  jit.comments.forEach((c, i) => {
    const before = frames[i]!, after = jit.packets[i]!;
    if (before[22] === after[22]) assert.equal(c, undefined);
    else assert.match(c ?? '', new RegExp(`^xdp_ttl_pong: ip\\.ttl ${before[22]}→${after[22]}, ip\\.checksum 0x[0-9a-f]{4}→0x[0-9a-f]{4}$`));
  });
  const other = await replayAnchor('xdp_ttl_pong', 'xdp', input, 'jit', 12, 'ttl-jit-12.pcap');
  assert.notDeepEqual(other.packets, jit.packets, 'another seed of bpf_get_prandom_u32 draws other TTLs');
});

anchorTest('xdp_ttl_pong replayed by the kernel (BPF_PROG_TEST_RUN) keeps the same promise on the same capture', { kernel: true }, async () => {
  const frames = ttlCapture();
  const input = await writeCapture('ttl-k.pcap', frames);
  const kernel = await replayAnchor('xdp_ttl_pong', 'xdp', input, 'kernel', 11, 'ttl-kernel.pcap');
  checkTtlPong(frames, kernel, 'kernel');
});

// ---------------------------------------------------------------- tc_psh_egress

const PSH_BYTE = 14 + 20 + 13;

/** The C program's test, at its fixed offsets: untagged IPv4, protocol TCP, none of FIN SYN RST PSH in byte 47. */
function pshEgressMayAct(f: Uint8Array): boolean {
  return f.length >= 54 && f[12] === 0x08 && f[13] === 0x00 && f[23] === 6 && (f[PSH_BYTE]! & 0x0f) === 0;
}

function pshCapture(): Uint8Array[] {
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 300; i++) {
    frames.push(frame({ l3: { kind: 'ipv4', id: i }, l4: { kind: 'tcp', flags: 0x010, seq: 5000 + 1400 * i, ack: 77, payload: Uint8Array.of(i & 0xff, 1, 2) } }));
    if (i % 15 === 0) {
      for (const flags of [0x002, 0x012, 0x011, 0x004, 0x018]) frames.push(frame({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags, seq: i } }));
      // With IP options the program reads "flags" inside the sequence number (byte 1 here: 0x10, so it may act).
      frames.push(frame({ l3: { kind: 'ipv4', options: RECORD_ROUTE }, l4: { kind: 'tcp', flags: 0x010, seq: 0x00100000 + i } }));
      frames.push(frame({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', dport: 5201 } }));
      frames.push(frame({ l3: { kind: 'ipv4' }, l4: { kind: 'icmp', type: 8, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv6' }, l4: { kind: 'tcp', flags: 0x010, seq: i } }));
      frames.push(frame({ eth: { vlans: [{ vid: 20 }] }, l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010, seq: i } }));
      frames.push(frame({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010, seq: i }, cut: 50 }));
    }
  }
  return frames;
}

/** Checks every packet against the program's behaviour; returns the indices it changed. */
function checkPshEgress(input: readonly Uint8Array[], r: { summary: ReplaySummary; packets: Uint8Array[] }, engine: string): number[] {
  assert.equal(r.packets.length, input.length, `${engine}: every packet leaves`);
  assert.deepEqual(r.summary.program?.verdicts, { TC_ACT_OK: input.length - r.summary.notRun.cutIpHeader });
  const picked: number[] = [];
  let mayAct = 0;
  input.forEach((before, i) => {
    const after = r.packets[i]!;
    if (!pshEgressMayAct(before)) {
      assert.deepEqual(after, before, `${engine}: packet ${i} is one the program leaves alone`);
      return;
    }
    mayAct++;
    if (diffAt(before, after).length === 0) return;
    picked.push(i);
    const expected = Uint8Array.from(before);
    expected[PSH_BYTE]! |= 0x08;
    assert.deepEqual(after, expected, `${engine}: packet ${i} differs in more than the PSH bit`);
    assert.equal(checksumsValid(before).l4, true);
    assert.equal(checksumsValid(after).l4, false, `${engine}: packet ${i}: the program does not fix the TCP checksum, so it must be stale`);
  });
  assert.ok(mayAct >= 300, `${mayAct} packets the program may act on`);
  assert.equal(r.summary.changed, picked.length);
  // 1 in 10 of about 320: far from 0 and from all of them.
  assert.ok(picked.length >= 8 && picked.length <= 80, `${engine}: ${picked.length} of ${mayAct} picked`);
  return picked;
}

anchorTest('tc_psh_egress replayed in the VM: untouched packets stay identical, picked ones differ only in PSH with a stale TCP checksum; JIT = interpreter', {}, async () => {
  const frames = pshCapture();
  const input = await writeCapture('psh.pcap', frames);
  const jit = await replayAnchor('tc_psh_egress', 'egress', input, 'jit', 3, 'psh-jit.pcapng');
  const interp = await replayAnchor('tc_psh_egress', 'egress', input, 'interp', 3, 'psh-interp.pcapng');
  const picked = checkPshEgress(frames, jit, 'jit');
  checkPshEgress(frames, interp, 'interp');
  assert.deepEqual(readFileSync(join(work, 'psh-jit.pcapng')), readFileSync(join(work, 'psh-interp.pcapng')));
  for (const i of picked) {
    // No tcp.checksum in the comment: the checksum did not change, which is the article's bug.
    if (frames[i]![14] === 0x45) assert.equal(jit.comments[i], 'tc_psh_egress: tcp.flags.push 0→1');
  }
  const other = await replayAnchor('tc_psh_egress', 'egress', input, 'jit', 4, 'psh-jit-4.pcap');
  assert.notDeepEqual(checkPshEgress(frames, other, 'jit seed 4'), picked, 'another seed picks other packets');
});

anchorTest('tc_psh_egress replayed by the kernel: the same packets untouched as in the VM, picked ones differ only in PSH, checksum stale', { kernel: true }, async () => {
  const frames = pshCapture();
  const input = await writeCapture('psh-k.pcap', frames);
  const kernel = await replayAnchor('tc_psh_egress', 'egress', input, 'kernel', 3, 'psh-kernel.pcap');
  const vm = await replayAnchor('tc_psh_egress', 'egress', input, 'jit', 3, 'psh-vm.pcap');
  const kPicked = new Set(checkPshEgress(frames, kernel, 'kernel'));
  const vPicked = new Set(checkPshEgress(frames, vm, 'jit'));
  // Where neither engine picked the packet, both left it byte for byte as it came.
  frames.forEach((_, i) => {
    if (!kPicked.has(i) && !vPicked.has(i)) assert.deepEqual(kernel.packets[i], vm.packets[i], `packet ${i}`);
  });
  assert.equal(kernel.summary.notRun.cutIpHeader, vm.summary.notRun.cutIpHeader);
});
