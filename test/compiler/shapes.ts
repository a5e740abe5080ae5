/**
 * The packet shapes every compiler test runs over: each layer the compiler parses, with and
 * without the complications it must get right (VLAN tags, IPv4 options, IPv6 extension
 * headers, fragments, UDP without checksum, frames cut short).
 */
import { buildPacket, type BuiltPacket, type PacketSpec } from '../helpers/packets.js';

const payload = (n: number, seed = 0): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 37 + seed) & 0xff);

/** IPv4 options: record route (7 bytes, 1 slot) and a NOP, padded to 8. */
const IPV4_OPTIONS = Uint8Array.from([7, 7, 4, 198, 18, 0, 9, 1]);
/** TCP options: MSS, SACK permitted, timestamps, NOP, window scale. */
const TCP_OPTIONS = Uint8Array.from([2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);

export const SPECS: Record<string, PacketSpec> = {
  'ipv4 tcp ack': { l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010 } },
  'ipv4 tcp data with options': {
    eth: { src: '02:00:00:00:00:07', dst: '02:00:00:00:00:01' },
    l3: { kind: 'ipv4', ttl: 200, id: 0xfffe, df: true, src: '198.19.7.7', dst: '198.18.0.1' },
    l4: { kind: 'tcp', sport: 5201, dport: 40001, seq: 0x90000000, flags: 0x018, options: TCP_OPTIONS, payload: payload(33) },
  },
  'ipv4 options tcp': { l3: { kind: 'ipv4', options: IPV4_OPTIONS }, l4: { kind: 'tcp', flags: 0x011, payload: payload(7, 3) } },
  'ipv4 udp': { l3: { kind: 'ipv4', tos: 0xb8, src: '198.19.255.1', dst: '198.18.0.9' }, l4: { kind: 'udp', sport: 123, dport: 53, payload: payload(19, 5) } },
  'ipv4 udp no checksum': { l3: { kind: 'ipv4' }, l4: { kind: 'udp', checksum: 'none', payload: payload(12) } },
  'ipv4 icmp echo request': { l3: { kind: 'ipv4' }, l4: { kind: 'icmp', type: 8, ident: 0x4321, seq: 7 } },
  'ipv4 icmp echo reply': { l3: { kind: 'ipv4', ttl: 57 }, l4: { kind: 'icmp', type: 0, ident: 0x4321, seq: 8 } },
  'ipv4 padded to 60': { l3: { kind: 'ipv4' }, l4: { kind: 'udp', payload: payload(2) }, pad: 16 },
  'vlan ipv4 tcp': { eth: { vlans: [{ vid: 100, pcp: 5 }] }, l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010, payload: payload(10) } },
  'qinq ipv4 udp': {
    eth: { vlans: [{ tpid: 0x88a8, vid: 4000, dei: 1 }, { vid: 7 }] },
    l3: { kind: 'ipv4', options: IPV4_OPTIONS }, l4: { kind: 'udp', dport: 40, payload: payload(9) },
  },
  'ipv4 first fragment tcp': {
    l3: { kind: 'ipv4', fragment: { offset: 0, more: true, length: 48 } },
    l4: { kind: 'tcp', flags: 0x018, payload: payload(100, 9) },
  },
  'ipv4 first fragment udp': {
    l3: { kind: 'ipv4', fragment: { offset: 0, more: true, length: 24 } },
    l4: { kind: 'udp', payload: payload(60, 2) },
  },
  // A non-first fragment whose payload starts where the TCP header was: it must not be read as TCP.
  'ipv4 later fragment': {
    l3: { kind: 'ipv4', fragment: { offset: 6, more: false } },
    l4: { kind: 'tcp', flags: 0x018, payload: payload(100, 9) },
  },
  'ipv4 unknown protocol': { l3: { kind: 'ipv4' }, l4: { kind: 'raw', proto: 47, bytes: payload(24) } },
  'ipv6 tcp': { l3: { kind: 'ipv6', hlim: 255, dst: '2001:db8::3' }, l4: { kind: 'tcp', flags: 0x010, payload: payload(8) } },
  'ipv6 udp': { l3: { kind: 'ipv6', tclass: 0x2e, src: '2001:db8:ffff::3', dst: '2001:db8:1::2' }, l4: { kind: 'udp', payload: payload(21) } },
  'ipv6 icmpv6 echo request': { l3: { kind: 'ipv6' }, l4: { kind: 'icmpv6', type: 128, ident: 77, seq: 3 } },
  'ipv6 ext headers tcp': {
    l3: { kind: 'ipv6', ext: [{ type: 'hop' }, { type: 'routing', len: 2 }, { type: 'dest', len: 1 }] },
    l4: { kind: 'tcp', flags: 0x002, options: TCP_OPTIONS },
  },
  'ipv6 ext headers icmpv6': {
    l3: { kind: 'ipv6', ext: [{ type: 'hop' }, { type: 'dest' }] },
    l4: { kind: 'icmpv6', type: 129, seq: 9 },
  },
  'ipv6 first fragment udp': {
    l3: { kind: 'ipv6', ext: [{ type: 'dest' }, { type: 'frag', offset: 0, more: true }], fragmentLength: 32 },
    l4: { kind: 'udp', payload: payload(70, 4) },
  },
  'ipv6 later fragment': {
    l3: { kind: 'ipv6', ext: [{ type: 'frag', offset: 4, more: true }], fragmentLength: 24 },
    l4: { kind: 'tcp', payload: payload(90) },
  },
  'vlan ipv6 udp': { eth: { vlans: [{ vid: 42 }] }, l3: { kind: 'ipv6' }, l4: { kind: 'udp', payload: payload(4) } },
  'not ip (ethertype 0x88b5)': {},
  'three vlan tags': { eth: { vlans: [{ vid: 1 }, { vid: 2 }, { vid: 3 }] }, l3: { kind: 'ipv4' }, l4: { kind: 'udp' } },
  'ipv4 cut inside the ip header': { l3: { kind: 'ipv4' }, l4: { kind: 'tcp' }, cut: 14 + 19 },
  'ipv4 cut inside the tcp header': { l3: { kind: 'ipv4' }, l4: { kind: 'tcp' }, cut: 34 + 19 },
  'ipv4 cut inside the ip options': { l3: { kind: 'ipv4', options: IPV4_OPTIONS }, l4: { kind: 'udp' }, cut: 14 + 24 },
  'ipv4 cut inside the tcp payload': { l3: { kind: 'ipv4' }, l4: { kind: 'tcp', payload: payload(40) }, cut: 54 + 7 },
  'ipv4 cut inside the icmp header': { l3: { kind: 'ipv4' }, l4: { kind: 'icmp' }, cut: 34 + 5 },
  'ipv6 cut inside the ipv6 header': { l3: { kind: 'ipv6' }, l4: { kind: 'udp' }, cut: 14 + 39 },
  'ipv6 cut inside an extension header': { l3: { kind: 'ipv6', ext: [{ type: 'hop', len: 1 }] }, l4: { kind: 'udp' }, cut: 54 + 12 },
  'ipv6 cut inside the udp header': { l3: { kind: 'ipv6' }, l4: { kind: 'udp' }, cut: 54 + 7 },
  'vlan cut inside the tag': { eth: { vlans: [{ vid: 5 }] }, l3: { kind: 'ipv4' }, l4: { kind: 'udp' }, cut: 16 },
  'ethernet header only': { l3: { kind: 'ipv4' }, l4: { kind: 'udp' }, cut: 14 },
};

let cache: Array<[string, BuiltPacket]> | undefined;

/** Every shape, built once. */
export function shapes(): Array<[string, BuiltPacket]> {
  cache ??= Object.entries(SPECS).map(([name, spec]) => [name, buildPacket(spec)]);
  return cache;
}

export function shape(name: keyof typeof SPECS & string): BuiltPacket {
  const found = shapes().find(([n]) => n === name);
  if (!found) throw new Error(`no packet shape named ${name}`);
  return found[1];
}

/**
 * Whether BPF_PROG_TEST_RUN accepts the frame for a sched_cls program: the kernel refuses
 * (EINVAL) an untagged IPv4 or IPv6 frame whose fixed IP header is cut, as such an skb
 * cannot exist at tc. XDP test runs take any frame of at least 14 bytes.
 */
export function tcTestRunAccepts(frame: Uint8Array): boolean {
  const type = (frame[12]! << 8) | frame[13]!;
  if (type === 0x0800) return frame.length >= 14 + 20;
  if (type === 0x86dd) return frame.length >= 14 + 40;
  return true;
}

/** The shapes a test run at this hook accepts. */
export function shapesFor(hook: 'xdp' | 'ingress' | 'egress'): Array<[string, BuiltPacket]> {
  return hook === 'xdp' ? shapes() : shapes().filter(([, p]) => tcTestRunAccepts(p.frame));
}
