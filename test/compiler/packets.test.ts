/**
 * The test packet builder and reference model checked on their own, and the builder's
 * checksums checked against an independent implementation (scapy), so that the compiler's
 * tests rest on packets known to be right.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { lookupField } from '../../src/rules/catalog.js';
import type { FieldDef } from '../../src/rules/ast.js';
import { buildPacket, checksumsValid, decode, expectedAfterSets, internetChecksum, readField } from '../helpers/packets.js';
import { shapes, shape } from './shapes.js';

const field = (name: string): FieldDef => {
  const f = lookupField(name);
  if (!f) throw new Error(`no field ${name}`);
  return f;
};

test('the Internet checksum of RFC 1071 example data', () => {
  // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (one's complement sum), checksum 220d.
  assert.equal(internetChecksum(Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0x220d);
  // An odd length is padded with a zero byte.
  assert.equal(internetChecksum(Uint8Array.from([0x01])), ~0x0100 & 0xffff);
});

test('every complete shape has right checksums, and fragments need the rest of the datagram', () => {
  for (const [name, pkt] of shapes()) {
    const report = checksumsValid(pkt.frame, { before: pkt.l4Before, after: pkt.l4After });
    const d = decode(pkt.frame);
    if (d.layers.ip !== undefined && pkt.spec.cut === undefined) assert.equal(report.ipv4, true, `${name}: IPv4 header checksum`);
    const hasL4 = d.layers.tcp ?? d.layers.udp ?? d.layers.icmp ?? d.layers.icmpv6;
    if (hasL4 !== undefined && pkt.spec.cut === undefined) {
      const want = pkt.spec.l4?.kind === 'udp' && pkt.spec.l4.checksum === 'none' ? 'none' : true;
      assert.equal(report.l4, want, `${name}: L4 checksum`);
    }
  }
  assert.equal(checksumsValid(shape('ipv4 first fragment tcp').frame).l4, undefined, 'a first fragment alone cannot be judged');
});

test('decode sees the layers the compiler documents', () => {
  const layers = (name: Parameters<typeof shape>[0]) => Object.keys(decode(shape(name).frame).layers).sort().join(',');
  assert.equal(layers('ipv4 tcp ack'), 'eth,ip,tcp');
  assert.equal(layers('qinq ipv4 udp'), 'eth,ip,udp,vlan');
  assert.equal(layers('ipv4 later fragment'), 'eth,ip');
  assert.equal(layers('ipv4 first fragment tcp'), 'eth,ip,tcp');
  assert.equal(layers('ipv6 ext headers tcp'), 'eth,ipv6,tcp');
  assert.equal(layers('ipv6 later fragment'), 'eth,ipv6');
  assert.equal(layers('ipv6 first fragment udp'), 'eth,ipv6,udp');
  assert.equal(layers('three vlan tags'), 'eth,vlan');
  assert.equal(layers('ipv4 cut inside the tcp header'), 'eth,ip');
  assert.equal(layers('ipv4 cut inside the ip header'), 'eth');
  assert.equal(layers('ipv6 cut inside an extension header'), 'eth,ipv6');
  assert.equal(decode(shape('ipv6 ext headers tcp').frame).layers.tcp, 14 + 40 + 8 + 24 + 16);
});

test('the reference writes fields with offset, shift and mask and refixes checksums', () => {
  const pkt = shape('ipv4 tcp data with options');
  const out = expectedAfterSets(pkt, [{ field: field('ip.ttl'), value: 9 }, { field: field('tcp.flags.push'), value: 0 }]);
  assert.equal(readField(out, field('ip.ttl')), 9);
  assert.equal(readField(out, field('tcp.flags.push')), 0);
  assert.equal(readField(out, field('tcp.flags.ack')), 1, 'neighbouring bits stay');
  assert.equal(readField(out, field('tcp.hdr_len')), 40, 'the rest of the word stays');
  assert.deepEqual(checksumsValid(out), { ipv4: true, l4: true });
  const stale = expectedAfterSets(pkt, [{ field: field('ip.ttl'), value: 9 }], 'keep');
  assert.equal(checksumsValid(stale).ipv4, false, 'checksum: keep leaves the IPv4 checksum stale');
  // UDP without checksum stays without.
  const none = expectedAfterSets(shape('ipv4 udp no checksum'), [{ field: field('udp.dstport'), value: 1 }]);
  assert.equal(checksumsValid(none).l4, 'none');
  // A field whose layer is absent changes nothing.
  const v6 = shape('ipv6 tcp');
  assert.deepEqual(expectedAfterSets(v6, [{ field: field('ip.ttl'), value: 1 }]), v6.frame);
  // Setting a checksum field keeps the value written.
  const forced = expectedAfterSets(pkt, [{ field: field('ip.ttl'), value: 1 }, { field: field('ip.checksum'), value: 0xbeef }]);
  assert.equal(readField(forced, field('ip.checksum')), 0xbeef);
  // Over a first fragment, the L4 checksum covers the whole datagram.
  const frag = shape('ipv4 first fragment tcp');
  const fragOut = expectedAfterSets(frag, [{ field: field('tcp.window_size_value'), value: 1 }]);
  assert.equal(checksumsValid(fragOut, { before: frag.l4Before, after: frag.l4After }).l4, true);
});

/** Frames as scapy sees them: checksums recomputed by scapy must equal the builder's. */
test('scapy computes the same checksums as the builder', (t) => {
  // Debian's python3-scapy lives with the system interpreter, which a PATH python may shadow.
  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import scapy.all'], { encoding: 'utf8' }).status === 0);
  if (!python) {
    t.skip('python3 with scapy is not installed');
    return;
  }
  const frames = shapes().filter(([, p]) => p.spec.cut === undefined && !p.spec.l3?.kind.startsWith('raw'));
  const script = `
import sys, json
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, ICMPv6EchoRequest, ICMPv6EchoReply, raw
out = []
for line in sys.stdin.read().split():
    p = Ether(bytes.fromhex(line))
    res = {}
    for layer, key in ((IP, 'ip'), (TCP, 'tcp'), (UDP, 'udp'), (ICMP, 'icmp'), (ICMPv6EchoRequest, 'icmpv6'), (ICMPv6EchoReply, 'icmpv6')):
        if layer in p:
            l = p[layer]
            if key != 'ip' and IP in p and (p[IP].flags.MF or p[IP].frag):
                continue
            if key != 'ip' and 'IPv6ExtHdrFragment' in p:
                continue
            name = 'cksum' if key == 'icmpv6' else 'chksum'
            if key == 'udp' and getattr(l, name) == 0:
                continue
            orig = getattr(l, name)
            q = Ether(bytes.fromhex(line))
            delattr(q[layer], name)
            q = Ether(raw(q))
            res[key] = [orig, getattr(q[layer], name)]
    out.append(res)
print(json.dumps(out))
`;
  const r = spawnSync(python, ['-c', script], { input: frames.map(([, p]) => Buffer.from(p.frame).toString('hex')).join('\n'), encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const results = JSON.parse(r.stdout) as Array<Record<string, [number, number]>>;
  let compared = 0;
  results.forEach((res, i) => {
    for (const [layer, [orig, recomputed]] of Object.entries(res)) {
      assert.equal(orig, recomputed, `${frames[i]![0]}: ${layer} checksum`);
      compared++;
    }
  });
  assert.ok(compared >= 25, `compared ${compared} checksums`);
});

test('built packets: lengths, VLAN tags and fragments as specified', () => {
  const p = buildPacket({ eth: { vlans: [{ vid: 0xabc, pcp: 7, dei: 1 }] }, l3: { kind: 'ipv4', df: true }, l4: { kind: 'udp', payload: new Uint8Array(3) } });
  assert.equal(p.frame.length, 14 + 4 + 20 + 8 + 3);
  assert.equal(readField(p.frame, field('vlan.id')), 0xabc);
  assert.equal(readField(p.frame, field('vlan.priority')), 7);
  assert.equal(readField(p.frame, field('vlan.dei')), 1);
  assert.equal(readField(p.frame, field('ip.flags.df')), 1);
  assert.equal(readField(p.frame, field('ip.len')), 31);
  assert.equal(readField(p.frame, field('udp.length')), 11);
  const f = shape('ipv4 later fragment').frame;
  assert.equal(readField(f, field('ip.frag_offset')), 6);
  assert.equal(readField(f, field('ip.flags.mf')), 0);
  const cut = shape('ipv4 cut inside the tcp header');
  assert.equal(cut.frame.length, 53);
  assert.equal(cut.whole.length, 54);
});
