/**
 * The connection key of a frame, byte for byte as the compiled programs build it
 * (src/compiler/codegen.ts, connKey; layout in CONN_KEY): the delay line reads frames from its
 * TAP and must name their connection the way the program named it in HELD_MAP.
 *
 * Both directions give one key: the endpoint (address, port) that sorts first is A, comparing
 * the raw words as a little-endian load gives them (IPv4: address << 16 | port as one number;
 * IPv6: the four address words in turn, then the ports). ICMP and ICMPv6 echo messages use
 * their identifier as both ports; frames without IP share the all-zero key.
 */
import { CONN_KEY, CONN_KEY_SIZE } from '../compiler/layout.js';
import { locateLayers } from '../replay/fields.js';

const PROTO = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58 } as const;

const le16 = (b: Uint8Array, o: number): number => b[o]! | (b[o + 1]! << 8);
const le32 = (b: Uint8Array, o: number): number => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;

/** The CONN_KEY_SIZE-byte connection key of an Ethernet frame. */
export function connKeyOf(frame: Uint8Array): Buffer {
  const key = Buffer.alloc(CONN_KEY_SIZE);
  const at = locateLayers(frame);
  let portS = 0, portD = 0, proto = 0;
  if (at.tcp !== undefined || at.udp !== undefined) {
    const l4 = (at.tcp ?? at.udp)!;
    proto = at.tcp !== undefined ? PROTO.tcp : PROTO.udp;
    portS = le16(frame, l4);
    portD = le16(frame, l4 + 2);
  } else if (at.icmp !== undefined || at.icmpv6 !== undefined) {
    const l4 = (at.icmp ?? at.icmpv6)!;
    proto = at.icmp !== undefined ? PROTO.icmp : PROTO.icmpv6;
    const type = frame[l4]!;
    const echo = at.icmp !== undefined ? type === 8 || type === 0 : type === 128 || type === 129;
    if (echo) portS = portD = le16(frame, l4 + 4);
  }
  key[CONN_KEY.proto] = proto;
  const write = (l3: number, words: number, src: number, dst: number, swap: boolean): void => {
    const [a, b] = swap ? [dst, src] : [src, dst];
    Buffer.from(frame.subarray(l3 + a, l3 + a + 4 * words)).copy(key, CONN_KEY.addrA);
    Buffer.from(frame.subarray(l3 + b, l3 + b + 4 * words)).copy(key, CONN_KEY.addrB);
    key.writeUInt16LE(swap ? portD : portS, CONN_KEY.portA);
    key.writeUInt16LE(swap ? portS : portD, CONN_KEY.portB);
  };
  if (at.ip !== undefined) {
    key[CONN_KEY.family] = 4;
    const s = le32(frame, at.ip + 12) * 65536 + portS;
    const d = le32(frame, at.ip + 16) * 65536 + portD;
    write(at.ip, 1, 12, 16, s > d);
  } else if (at.ipv6 !== undefined) {
    key[CONN_KEY.family] = 6;
    let swap: boolean | undefined;
    for (let i = 0; i < 4 && swap === undefined; i++) {
      const s = le32(frame, at.ipv6 + 8 + 4 * i), d = le32(frame, at.ipv6 + 24 + 4 * i);
      if (s !== d) swap = s > d;
    }
    write(at.ipv6, 4, 8, 24, swap ?? portS > portD);
  }
  return key;
}
