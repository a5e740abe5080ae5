/**
 * tcp.len, Wireshark's TCP payload length, computed by the compiled program from the IP length
 * field, the IP header's options or extension headers and the TCP data offset. Three checks:
 * the reference model (test/helpers/packets.ts) gives the values tshark 4 gives on the same
 * frames (written to a pcap with their uncut lengths, as a capture with a snap length records
 * them); the kernel agrees with the reference at every hook on every shape, well-formed or not;
 * and the values of named shapes are pinned, so the first two cannot drift together.
 */
import { inCI } from '../helpers/kernel.js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Hook } from '../../src/rules/ast.js';
import { buildPacket, internetChecksum, tcpPayloadLength, type BuiltPacket, type PacketSpec } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { changedFields } from '../../src/replay/fields.js';
import { VmRunner } from '../../src/replay/runner.js';
import { compileRules, rule, run, verdictsAt, withRules } from './harness.js';
import { evalCond } from './reference-eval.js';
import { shapes, tcTestRunAccepts } from './shapes.js';
import { pcapGlobalHeader, pcapRecord } from '../helpers/pcap.js';

const bytes = (n: number, seed = 0): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
/** TCP options: MSS, SACK permitted, window scale, padded to 12 bytes (a 32-byte header). */
const TCP_OPTIONS_12 = Uint8Array.from([2, 4, 5, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1]);

/** An IPv4 frame (no VLAN) with bytes of its IP or TCP header changed, the IP checksum kept right. */
function patched(spec: PacketSpec, patch: (frame: Uint8Array, ip: number, tcp: number) => void): BuiltPacket {
  const p = buildPacket(spec);
  const frame = p.whole.slice();
  const ip = 14;
  const tcp = spec.l3?.kind === 'ipv6' ? -1 : ip + (frame[ip]! & 0xf) * 4;
  patch(frame, ip, tcp);
  if (spec.l3?.kind === 'ipv4') {
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    const c = internetChecksum(frame.subarray(ip, ip + (frame[ip]! & 0xf) * 4));
    frame[ip + 10] = c >> 8;
    frame[ip + 11] = c & 0xff;
  }
  return { ...p, frame, whole: frame };
}

const setU16 = (b: Uint8Array, at: number, v: number): void => {
  b[at] = v >> 8;
  b[at + 1] = v & 0xff;
};

/** Shapes beyond the shared ones: the cases tcp.len has to get right. */
const EXTRA: Array<[string, BuiltPacket]> = [
  ['ipv4 tcp ack padded to 60', buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010 }, pad: 6 })],
  ['ipv4 tcp 1400 bytes', buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x018, payload: bytes(1400) } })],
  ['ipv4 tcp cut by a snap length', buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x018, payload: bytes(500) }, cut: 80 })],
  ['ipv6 ext headers tcp data', buildPacket({
    l3: { kind: 'ipv6', ext: [{ type: 'hop' }, { type: 'routing', len: 2 }, { type: 'dest', len: 1 }] },
    l4: { kind: 'tcp', flags: 0x018, payload: bytes(21, 1) },
  })],
  ['vlan ipv6 dest options tcp data', buildPacket({
    eth: { vlans: [{ vid: 9 }] }, l3: { kind: 'ipv6', ext: [{ type: 'dest' }] }, l4: { kind: 'tcp', flags: 0x018, options: TCP_OPTIONS_12, payload: bytes(5, 2) },
  })],
  ['ipv6 first fragment tcp', buildPacket({
    l3: { kind: 'ipv6', ext: [{ type: 'dest' }, { type: 'frag', offset: 0, more: true }], fragmentLength: 32 },
    l4: { kind: 'tcp', flags: 0x018, payload: bytes(60, 3) },
  })],
  ['ipv6 atomic fragment tcp', buildPacket({
    l3: { kind: 'ipv6', ext: [{ type: 'frag', offset: 0, more: false }] }, l4: { kind: 'tcp', flags: 0x018, payload: bytes(16, 4) },
  })],
  ['ipv4 total length 0 (segmentation offload)', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip) => setU16(f, ip + 2, 0))],
  ['ipv4 total length 0 with options', patched({ l3: { kind: 'ipv4', options: Uint8Array.from([1, 1, 1, 0]) }, l4: { kind: 'tcp', payload: bytes(9) } }, (f, ip) => setU16(f, ip + 2, 0))],
  ['ipv4 total length inside the tcp header', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp' } }, (f, ip) => setU16(f, ip + 2, 25))],
  ['ipv4 total length inside the ip header', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp' } }, (f, ip) => setU16(f, ip + 2, 10))],
  ['ipv4 total length past the frame', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip) => setU16(f, ip + 2, 200))],
  ['tcp data offset 4 (bogus)', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, _ip, tcp) => {
    f[tcp + 12] = (4 << 4) | (f[tcp + 12]! & 0xf);
  })],
  ['tcp data offset 4, total length inside the fixed header', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip, tcp) => {
    f[tcp + 12] = (4 << 4) | (f[tcp + 12]! & 0xf);
    setU16(f, ip + 2, 20 + 18);
  })],
  // Wireshark reads the TCP header up to the window (16 bytes) before it counts the payload.
  ['tcp data offset 0, 16 bytes after the ip header', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip, tcp) => {
    f[tcp + 12] &= 0xf;
    setU16(f, ip + 2, 20 + 16);
  })],
  ['tcp data offset 0, 15 bytes after the ip header', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip, tcp) => {
    f[tcp + 12] &= 0xf;
    setU16(f, ip + 2, 20 + 15);
  })],
  ['tcp options past the total length', patched({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', options: TCP_OPTIONS_12, payload: bytes(8) } }, (f, ip) => setU16(f, ip + 2, 20 + 24))],
  ['ipv6 payload length 0', patched({ l3: { kind: 'ipv6' }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip) => setU16(f, ip + 4, 0))],
  ['ipv6 payload length inside the extension headers', patched({ l3: { kind: 'ipv6', ext: [{ type: 'dest', len: 1 }] }, l4: { kind: 'tcp', payload: bytes(8) } }, (f, ip) => setU16(f, ip + 4, 10))],
];

function allShapes(): Array<[string, BuiltPacket]> {
  return [...shapes(), ...EXTRA];
}

/** tcp.len of named shapes, as tshark 4.0 shows them (undefined: no tcp.len). */
const PINNED: Record<string, number | undefined> = {
  'ipv4 tcp ack': 0,
  'ipv4 tcp data with options': 33,
  'ipv4 options tcp': 7,
  'vlan ipv4 tcp': 10,
  'ipv4 first fragment tcp': undefined,
  'ipv4 later fragment': undefined,
  'ipv6 tcp': 8,
  'ipv6 ext headers tcp': 0,
  'ipv4 cut inside the tcp payload': 40,
  'ipv4 cut inside the tcp header': undefined,
  'ipv4 udp': undefined,
  'ipv4 tcp ack padded to 60': 0,
  'ipv4 tcp 1400 bytes': 1400,
  'ipv4 tcp cut by a snap length': 500,
  'ipv6 ext headers tcp data': 21,
  'vlan ipv6 dest options tcp data': 5,
  'ipv6 first fragment tcp': undefined,
  'ipv6 atomic fragment tcp': 16,
  'ipv4 total length 0 (segmentation offload)': 8,
  'ipv4 total length 0 with options': 9,
  'ipv4 total length inside the tcp header': undefined,
  'ipv4 total length inside the ip header': undefined,
  // Wireshark stops at the end of the packet (8); netmangle believes the length field.
  'ipv4 total length past the frame': 160,
  'tcp data offset 4 (bogus)': 12,
  'tcp data offset 4, total length inside the fixed header': 2,
  'tcp data offset 0, 16 bytes after the ip header': 16,
  'tcp data offset 0, 15 bytes after the ip header': undefined,
  'tcp options past the total length': undefined,
  'ipv6 payload length 0': undefined,
  'ipv6 payload length inside the extension headers': undefined,
};

/** Shapes where netmangle knowingly differs from tshark, with tshark's value. */
const DIFFERS_FROM_TSHARK: Record<string, string> = {
  'ipv4 total length past the frame': '8',
  // Captured up to byte 19 of the TCP header: netmangle has a TCP layer only when the whole
  // fixed header is in the frame (for every tcp.* field); tshark reads what is there.
  'ipv4 cut inside the tcp header': '0',
};

test('the reference gives the pinned tcp.len of each named shape', () => {
  const byName = new Map(allShapes());
  for (const [name, want] of Object.entries(PINNED)) {
    const pkt = byName.get(name);
    assert.ok(pkt, `no shape named ${name}`);
    assert.equal(tcpPayloadLength(pkt.frame), want, name);
  }
});

test('replay\'s change comments name the length field that changed, not tcp.len computed from it', () => {
  const before = new Map(allShapes()).get('ipv4 tcp 1400 bytes')!.frame;
  const after = before.slice();
  setU16(after, 14 + 2, 20 + 20 + 1000);
  assert.equal(tcpPayloadLength(after), 1000);
  assert.deepEqual(changedFields(before, after).map((c) => `${c.field.name} ${c.before}→${c.after}`), ['ip.len 1440→1040']);
  // tcp.len has no bytes of its own: a change of the ports is the ports' alone.
  const ports = before.slice();
  setU16(ports, 34, 1234);
  assert.deepEqual(changedFields(before, ports).map((c) => c.field.name), ['tcp.srcport']);
});

/** A classic pcap (Ethernet, microseconds) with each frame's uncut length as its original length. */
function pcapOf(packets: BuiltPacket[]): Uint8Array {
  return Buffer.concat([pcapGlobalHeader(262144), ...packets.map((p, i) => pcapRecord(p.frame, 1_700_000_000 + i, 0, p.whole.length))]);
}

/** Outside CI a missing tshark skips the comparison; in CI (which installs it) it fails. */
function tsharkMissing(): string | undefined {
  try {
    execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    if (inCI) throw new Error('tshark is not installed, and CI must compare with it: run scripts/setup.sh');
    return 'tshark is not installed';
  }
}

test('the reference agrees with tshark on every shape (IP reassembly off: netmangle sees one packet at a time)', { skip: tsharkMissing() }, () => {
  const all = allShapes();
  const dir = mkdtempSync(join(tmpdir(), 'nm-tcplen-'));
  try {
    const file = join(dir, 'shapes.pcap');
    writeFileSync(file, pcapOf(all.map(([, p]) => p)));
    const out = execFileSync('tshark', ['-n', '-r', file, '-o', 'ip.defragment:FALSE', '-o', 'ipv6.defragment:FALSE', '-T', 'fields', '-e', 'tcp.len'], {
      encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'],
    });
    const lines = out.split('\n').slice(0, all.length);
    assert.equal(lines.length, all.length);
    const failures: string[] = [];
    all.forEach(([name, p], i) => {
      const tshark = lines[i]!.trim();
      const ours = tcpPayloadLength(p.frame);
      const want = DIFFERS_FROM_TSHARK[name] ?? (ours === undefined ? '' : String(ours));
      if (tshark !== want) failures.push(`${name}: tshark says ${JSON.stringify(tshark)}, the reference ${JSON.stringify(ours)}`);
    });
    assert.deepEqual(failures, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Shapes a test run at the hook takes, and conditions that tell every value of tcp.len among them apart. */
function casesFor(hook: Hook): { usable: Array<[string, BuiltPacket]>; conditions: string[] } {
  const usable = allShapes().filter(([, p]) => hook === 'xdp' || tcTestRunAccepts(p.frame));
  const values = [...new Set(usable.map(([, p]) => tcpPayloadLength(p.frame)).filter((v): v is number => v !== undefined))].sort((x, y) => x - y);
  assert.ok(values.length >= 10, `values ${values.join(' ')}`);
  const conditions = [
    ...values.map((v) => `tcp.len == ${v}`),
    'tcp.len >= 0', 'not tcp.len >= 0', 'tcp.len > 100', 'tcp.len', 'ipv6 and tcp.len < 20', 'ip and tcp.len != 0',
    'tcp.len - 1 > 0x7fffffff', 'tcp.flags.push and tcp.len > 10',
  ];
  return { usable, conditions };
}

test('in the VM (replay), interpreter and JIT: the program\'s tcp.len is the reference\'s on every shape', () => {
  const failures: string[] = [];
  for (const hook of ['xdp', 'egress', 'ingress'] as Hook[]) {
    const { usable, conditions } = casesFor(hook);
    for (const text of conditions) {
      const r = rule(`${text} => drop`, hook);
      for (const engine of ['interpreter', 'jit'] as const) {
        const vm = new VmRunner(compileRules(hook, [r]), engine);
        for (const [name, pkt] of usable) {
          const want = evalCond(pkt.frame, r.match) ? verdictsAt(hook).drop : verdictsAt(hook).none;
          const got = vm.run(pkt.frame);
          if (got !== want) failures.push(`${hook} ${engine}: ${text} on ${name}: returned ${got}, expected ${want}`);
        }
      }
    }
  }
  assert.deepEqual(failures, []);
});

for (const hook of ['xdp', 'egress', 'ingress'] as Hook[]) {
  kernelTest(`${hook}: the program's tcp.len is the reference's on every shape`, () => {
    const { usable, conditions } = casesFor(hook);
    const failures: string[] = [];
    for (const text of conditions) {
      const r = rule(`${text} => drop`, hook);
      withRules(hook, [r], (p) => {
        for (const [name, pkt] of usable) {
          const want = evalCond(pkt.frame, r.match);
          const got = run(p, pkt.frame);
          const verdict = want ? verdictsAt(hook).drop : verdictsAt(hook).none;
          if (got.retval !== verdict) failures.push(`${text} on ${name} (reference tcp.len ${tcpPayloadLength(pkt.frame)}): returned ${got.retval}, the condition is ${want}`);
        }
      });
    }
    assert.deepEqual(failures, []);
  }, { timeout: 120_000 });
}
