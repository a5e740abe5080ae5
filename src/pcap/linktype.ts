/**
 * Link-layer header types (the LINKTYPE_* numbers of tcpdump.org/linktypes.html) and the
 * conversion of the ones netmangle understands into Ethernet frames, which is what the
 * compiled programs expect (XDP and tc both see an Ethernet header on the interfaces we attach to).
 */
import { CaptureError } from './capture-error.js';

export const LINKTYPE_NULL = 0;
export const LINKTYPE_ETHERNET = 1;
export const LINKTYPE_RAW = 101;
export const LINKTYPE_LOOP = 108;
export const LINKTYPE_LINUX_SLL = 113;
export const LINKTYPE_IPV4 = 228;
export const LINKTYPE_IPV6 = 229;
export const LINKTYPE_LINUX_SLL2 = 276;

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETH_HLEN = 14;

const LINKTYPE_NAMES: Record<number, string> = {
  0: 'BSD loopback (NULL)',
  1: 'Ethernet',
  6: 'IEEE 802.5 Token Ring',
  9: 'PPP',
  101: 'raw IP',
  105: 'IEEE 802.11',
  108: 'OpenBSD loopback (LOOP)',
  113: 'Linux cooked (SLL)',
  119: 'IEEE 802.11 Prism',
  127: 'IEEE 802.11 radiotap',
  147: 'user 0',
  189: 'Linux USB',
  192: 'PPI',
  195: 'IEEE 802.15.4',
  201: 'Bluetooth HCI H4 with phdr',
  204: 'PPP with direction',
  215: 'IEEE 802.15.4 without FCS',
  220: 'Linux USB (mmapped)',
  228: 'raw IPv4',
  229: 'raw IPv6',
  249: 'netlink',
  252: 'Wireshark upper PDU',
  276: 'Linux cooked v2 (SLL2)',
};

/** "Ethernet (1)", "Linux cooked (SLL) (113)", "link type 147" … for messages. */
export function linkTypeName(linkType: number): string {
  const name = LINKTYPE_NAMES[linkType];
  return name === undefined ? `link type ${linkType}` : `${name} (${linkType})`;
}

/**
 * What replay does with a link type: Ethernet passes through untouched; Linux cooked (SLL,
 * SLL2), raw IP (101, 228, 229) and BSD/OpenBSD loopback (0, 108) are converted by
 * `toEthernet`; everything else (802.11, PPP, USB …) is refused.
 */
export function linkTypeSupport(linkType: number): 'ethernet' | 'convert' | 'unsupported' {
  switch (linkType) {
    case LINKTYPE_ETHERNET:
      return 'ethernet';
    case LINKTYPE_LINUX_SLL:
    case LINKTYPE_LINUX_SLL2:
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4:
    case LINKTYPE_IPV6:
    case LINKTYPE_NULL:
    case LINKTYPE_LOOP:
      return 'convert';
    default:
      return 'unsupported';
  }
}

/** Throws a CaptureError naming the link type when `toEthernet` cannot handle it. */
export function checkLinkType(linkType: number, file: string): void {
  if (linkTypeSupport(linkType) !== 'unsupported') return;
  throw new CaptureError(file, `${linkTypeName(linkType)} is not supported: netmangle replays Ethernet frames`, {
    hint: 'supported link types: Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw IP (101, 228, 229), BSD loopback (0, 108); '
      + 'capture on an Ethernet-like interface (tcpdump -i IFACE, not -i any) or convert the file first',
    exitCode: 2,
  });
}

/**
 * Converts one captured frame of `linkType` into an Ethernet frame.
 *
 * - Ethernet: returns `data` itself (no copy).
 * - Linux cooked SLL / SLL2: the ethertype comes from the cooked header's protocol field; the
 *   source MAC is the cooked header's link-layer address when it is 6 bytes long (else zero);
 *   the destination MAC is ff:ff:ff:ff:ff:ff for packets the capture marked broadcast and
 *   00:00:00:00:00:00 otherwise (the cooked header does not record it). Protocol values below
 *   0x0600 (802.2 LLC, Novell 802.3, CAN …) are not Ethernet payloads and are refused.
 * - Raw IP (101): ethertype IPv4 or IPv6 from the IP version nibble; 228 is always IPv4, 229
 *   always IPv6. Both MACs are zero.
 * - BSD loopback (0, host byte order) and OpenBSD loopback (108, network byte order): the
 *   address family (2 = IPv4; 24, 28, 30 = IPv6) picks the ethertype.
 *
 * The result is written into `scratch` when it is given and large enough (the returned view is
 * then valid until `scratch` is reused), otherwise into a new array. A frame that cannot be
 * converted throws a CaptureError that says why.
 */
export function toEthernet(data: Uint8Array, linkType: number, scratch?: Uint8Array, file = 'capture'): Uint8Array {
  switch (linkType) {
    case LINKTYPE_ETHERNET:
      return data;
    case LINKTYPE_LINUX_SLL: {
      // packet type(2) ARPHRD(2) address length(2) address(8) protocol(2)
      if (data.length < 16) throw shortFrame(file, linkType, data.length, 16);
      const packetType = (data[0]! << 8) | data[1]!;
      const addrLen = (data[4]! << 8) | data[5]!;
      const protocol = (data[14]! << 8) | data[15]!;
      return cooked(data, 16, protocol, packetType, data, 6, addrLen, scratch, file, linkType);
    }
    case LINKTYPE_LINUX_SLL2: {
      // protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) address length(1) address(8)
      if (data.length < 20) throw shortFrame(file, linkType, data.length, 20);
      const protocol = (data[0]! << 8) | data[1]!;
      const packetType = data[10]!;
      const addrLen = data[11]!;
      return cooked(data, 20, protocol, packetType, data, 12, addrLen, scratch, file, linkType);
    }
    case LINKTYPE_RAW: {
      if (data.length < 1) throw shortFrame(file, linkType, 0, 1);
      const version = data[0]! >> 4;
      if (version === 4) return synthesize(data, 0, ETHERTYPE_IPV4, null, 0, false, scratch);
      if (version === 6) return synthesize(data, 0, ETHERTYPE_IPV6, null, 0, false, scratch);
      throw new CaptureError(file, `raw IP packet with IP version ${version} cannot be replayed (only IPv4 and IPv6)`);
    }
    case LINKTYPE_IPV4:
      return synthesize(data, 0, ETHERTYPE_IPV4, null, 0, false, scratch);
    case LINKTYPE_IPV6:
      return synthesize(data, 0, ETHERTYPE_IPV6, null, 0, false, scratch);
    case LINKTYPE_NULL:
    case LINKTYPE_LOOP: {
      if (data.length < 4) throw shortFrame(file, linkType, data.length, 4);
      const be = ((data[0]! << 24) | (data[1]! << 16) | (data[2]! << 8) | data[3]!) >>> 0;
      const le = ((data[3]! << 24) | (data[2]! << 16) | (data[1]! << 8) | data[0]!) >>> 0;
      // LOOP is always network order; NULL is the capturing host's order, so take whichever reads as a small number.
      const family = linkType === LINKTYPE_LOOP ? be : Math.min(be, le);
      if (family === 2) return synthesize(data, 4, ETHERTYPE_IPV4, null, 0, false, scratch);
      if (family === 24 || family === 28 || family === 30) return synthesize(data, 4, ETHERTYPE_IPV6, null, 0, false, scratch);
      throw new CaptureError(file, `loopback packet with address family ${family} cannot be replayed (only IPv4 and IPv6)`);
    }
    default:
      checkLinkType(linkType, file);
      throw new CaptureError(file, `${linkTypeName(linkType)} is not supported`);
  }
}

function shortFrame(file: string, linkType: number, have: number, need: number): CaptureError {
  return new CaptureError(file, `${linkTypeName(linkType)} frame of ${have} bytes is shorter than its ${need}-byte link header`);
}

function cooked(data: Uint8Array, headerLen: number, protocol: number, packetType: number, addrSrc: Uint8Array, addrOff: number,
  addrLen: number, scratch: Uint8Array | undefined, file: string, linkType: number): Uint8Array {
  if (protocol < 0x0600) {
    throw new CaptureError(file, `${linkTypeName(linkType)} packet with protocol 0x${protocol.toString(16).padStart(4, '0')} `
      + 'is not an Ethernet payload (802.2 LLC, 802.3, CAN …) and cannot be replayed');
  }
  const broadcast = packetType === 1; // PACKET_BROADCAST
  return synthesize(data, headerLen, protocol, addrLen === 6 ? addrSrc : null, addrOff, broadcast, scratch);
}

function synthesize(data: Uint8Array, payloadOff: number, ethertype: number, srcMac: Uint8Array | null, srcMacOff: number,
  broadcast: boolean, scratch: Uint8Array | undefined): Uint8Array {
  const payloadLen = data.length - payloadOff;
  const total = ETH_HLEN + payloadLen;
  const out = scratch !== undefined && scratch.length >= total ? scratch.subarray(0, total) : new Uint8Array(total);
  out.fill(broadcast ? 0xff : 0, 0, 6);
  if (srcMac !== null) out.set(srcMac.subarray(srcMacOff, srcMacOff + 6), 6);
  else out.fill(0, 6, 12);
  out[12] = ethertype >> 8;
  out[13] = ethertype & 0xff;
  out.set(data.subarray(payloadOff), ETH_HLEN);
  return out;
}
