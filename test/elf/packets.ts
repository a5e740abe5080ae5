/** Crafted Ethernet/IPv4 frames for the object tests (addresses from 198.18.0.0/15). */

function csum(bytes: Uint8Array, start: number, end: number, seed = 0): number {
  let sum = seed;
  for (let i = start; i < end; i += 2) sum += (bytes[i]! << 8) | (i + 1 < end ? bytes[i + 1]! : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function ipv4(proto: number, ttl: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(14 + 20 + payload.length);
  const v = new DataView(frame.buffer);
  frame.set([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
  v.setUint16(12, 0x0800);
  frame[14] = 0x45;
  v.setUint16(16, 20 + payload.length);
  v.setUint16(18, 0x1234);
  frame[22] = ttl;
  frame[23] = proto;
  frame.set([198, 18, 0, 1, 198, 18, 0, 2], 26);
  v.setUint16(24, csum(frame, 14, 34));
  frame.set(payload, 34);
  return frame;
}

/** An ICMP echo reply (type 0) with a valid checksum. */
export function icmpEchoReply(ttl = 64, seq = 1): Uint8Array {
  const icmp = new Uint8Array(16);
  const v = new DataView(icmp.buffer);
  v.setUint16(4, 0x4242);
  v.setUint16(6, seq);
  icmp.set([1, 2, 3, 4, 5, 6, 7, 8], 8);
  v.setUint16(2, csum(icmp, 0, icmp.length));
  return ipv4(1, ttl, icmp);
}

/** A TCP segment with the given flag bits (0x10 ACK, 0x08 PSH, 0x02 SYN) and 6 payload bytes. */
export function tcpSegment(flags = 0x10, ttl = 64): Uint8Array {
  const tcp = new Uint8Array(26);
  const v = new DataView(tcp.buffer);
  v.setUint16(0, 40000);
  v.setUint16(2, 5201);
  v.setUint32(4, 1000);
  v.setUint32(8, 2000);
  tcp[12] = 5 << 4;
  tcp[13] = flags;
  v.setUint16(14, 65535);
  tcp.set([104, 101, 108, 108, 111, 10], 20);
  const pseudo = new Uint8Array(12);
  pseudo.set([198, 18, 0, 1, 198, 18, 0, 2, 0, 6, 0, tcp.length]);
  const partial = ~csum(pseudo, 0, 12) & 0xffff;
  v.setUint16(16, csum(tcp, 0, tcp.length, partial));
  return ipv4(6, ttl, tcp);
}

/** True when the IPv4 header checksum of an Ethernet frame is right. */
export function ipv4ChecksumOk(frame: Uint8Array): boolean {
  return csum(frame, 14, 34) === 0;
}
