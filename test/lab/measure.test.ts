// Parsers behind the lab's measurements: ping output, nstat output, PSH counting in a pcap.
// No root needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { countPshInPcap, nstatDelta, parseNstat, parsePing } from '../../src/lab/measure.js';
import { pcapGlobalHeader, pcapRecord } from '../helpers/pcap.js';

test('parsePing reads every reply with its TTL and RTT, and the totals', () => {
  const out = [
    'PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.',
    '64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=0.228 ms',
    '64 bytes from 198.18.0.2: icmp_seq=2 ttl=17 time=0.05 ms',
    '64 bytes from 198.18.0.2: icmp_seq=4 ttl=3 time=1.5 ms',
    '',
    '--- 198.18.0.2 ping statistics ---',
    '4 packets transmitted, 3 received, 25% packet loss, time 3ms',
  ].join('\n');
  const p = parsePing(out, '198.18.0.2');
  assert.equal(p.sent, 4);
  assert.equal(p.received, 3);
  assert.deepEqual(p.ttls, [64, 17, 3]);
  assert.deepEqual(p.replies[2], { seq: 4, ttl: 3, rttMs: 1.5 });
});

test('parsePing: IPv6 replies and no replies at all', () => {
  const p6 = parsePing('64 bytes from 2001:db8::2: icmp_seq=1 ttl=64 time=0.071 ms\n1 packets transmitted, 1 received, 0% packet loss\n');
  assert.deepEqual(p6.ttls, [64]);
  const none = parsePing('--- x ---\n3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n');
  assert.equal(none.sent, 3);
  assert.equal(none.received, 0);
  assert.deepEqual(none.ttls, []);
});

test('parseNstat and nstatDelta', () => {
  const before = parseNstat('#kernel\nIpInReceives                    10                 0.0\nTcpInCsumErrors                 1                  0.0\n');
  const after = parseNstat('#kernel\nIpInReceives                    25                 0.0\nTcpInCsumErrors                 4                  0.0\nUdpInCsumErrors 2 0.0\n');
  assert.deepEqual(before, { IpInReceives: 10, TcpInCsumErrors: 1 });
  const d = nstatDelta(before, after);
  assert.equal(d.TcpInCsumErrors, 3);
  assert.equal(d.UdpInCsumErrors, 2);
  assert.equal(d.IcmpInCsumErrors, 0);
  assert.deepEqual(nstatDelta(before, after, ['IpInReceives']), { IpInReceives: 15 });
});

/** A little-endian pcap with Ethernet frames holding IPv4/TCP or IPv6/TCP segments. */
function pcapOf(segments: Array<{ v6?: boolean; sport: number; dport: number; payload: number; psh: boolean; vlan?: boolean }>): Uint8Array {
  const parts: Buffer[] = [pcapGlobalHeader(128)];
  for (const s of segments) {
    const eth = Buffer.alloc(s.vlan ? 18 : 14);
    if (s.vlan) {
      eth.writeUInt16BE(0x8100, 12);
      eth.writeUInt16BE(0x0064, 14);
    }
    eth.writeUInt16BE(s.v6 ? 0x86dd : 0x0800, eth.length - 2);
    let ip: Buffer;
    if (s.v6) {
      ip = Buffer.alloc(40);
      ip[0] = 0x60;
      ip.writeUInt16BE(20 + s.payload, 4);
      ip[6] = 6;
      ip[7] = 64;
      ip[8] = 0x20;
      ip[24] = 0x20;
      ip[39] = 2;
    } else {
      ip = Buffer.alloc(20);
      ip[0] = 0x45;
      ip.writeUInt16BE(20 + 20 + s.payload, 2);
      ip[8] = 64;
      ip[9] = 6;
      Buffer.from([198, 18, 0, 1]).copy(ip, 12);
      Buffer.from([198, 18, 0, 2]).copy(ip, 16);
    }
    const tcp = Buffer.alloc(20);
    tcp.writeUInt16BE(s.sport, 0);
    tcp.writeUInt16BE(s.dport, 2);
    tcp[12] = 5 << 4;
    tcp[13] = 0x10 | (s.psh ? 0x08 : 0);
    // Snap length: the payload itself is not in the capture, only counted from the IP length.
    const frame = Buffer.concat([eth, ip, tcp]);
    parts.push(pcapRecord(frame, 0, 0, frame.length + s.payload));
  }
  return new Uint8Array(Buffer.concat(parts));
}

test('countPshInPcap counts data segments and PSH in the flow with the most payload', () => {
  const segs = [
    // control connection: small, all PSH
    { sport: 40000, dport: 5201, payload: 37, psh: true },
    { sport: 40000, dport: 5201, payload: 200, psh: true },
    // bulk flow: 10 data segments, 2 with PSH, plus pure ACKs that must not count
    ...Array.from({ length: 10 }, (_, i) => ({ sport: 40002, dport: 5201, payload: 1448, psh: i === 4 || i === 9 })),
    { sport: 40002, dport: 5201, payload: 0, psh: false },
    { sport: 40002, dport: 5201, payload: 0, psh: true },
  ];
  const c = countPshInPcap(pcapOf(segs));
  assert.equal(c.dataSegments, 10);
  assert.equal(c.pshSegments, 2);
  assert.equal(c.pshShare, 0.2);
  assert.equal(c.payloadBytes, 14480);
});

test('countPshInPcap reads IPv6 and VLAN-tagged frames', () => {
  const c = countPshInPcap(pcapOf([
    { v6: true, sport: 1, dport: 2, payload: 1000, psh: true },
    { v6: true, sport: 1, dport: 2, payload: 1000, psh: false, vlan: true },
    { v6: true, sport: 1, dport: 2, payload: 1000, psh: false },
  ]));
  assert.deepEqual([c.dataSegments, c.pshSegments, c.payloadBytes], [3, 1, 3000]);
});

test('countPshInPcap refuses what is not a pcap file', () => {
  assert.throws(() => countPshInPcap(new Uint8Array(40)), /not a pcap file/);
  assert.throws(() => countPshInPcap(new Uint8Array(4)), /too short/);
});
