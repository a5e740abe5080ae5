/**
 * The field catalog: every packet field a rule can name, with Wireshark's display-filter name
 * and Wireshark's units, where it sits in its layer's header, and which checksums cover it.
 * It is the one description of packet layout in netmangle: the parser resolves names here,
 * the compiler and the VM's decoder read offsets and masks from here, and docs/fields.md is
 * rendered from it (see field-table.ts).
 *
 * Units follow Wireshark 4 (checked against tshark 4.0): ip.hdr_len and tcp.hdr_len are
 * bytes (4 × the header's nibble), ip.frag_offset is the raw 13-bit value in 8-byte units,
 * tcp.flags is the 12-bit field (reserved bits and AE included), ipv6.flow is the 20-bit label.
 */
import type { ChecksumCover, FieldDef, FieldKind, Hook, Layer } from './ast.js';
import { MAX_NAME_LENGTH } from './limits.js';

/** Bytes a layer's fixed header has; every field of the layer lies inside it. */
export const HEADER_SIZE: Record<Layer, number> = {
  frame: 0,
  eth: 14,
  vlan: 4,
  ip: 20,
  ipv6: 40,
  tcp: 20,
  udp: 8,
  icmp: 8,
  icmpv6: 8,
};

/** Bare protocol names a match may test (`tcp`, `ipv6`), one per layer. */
export const PROTOCOLS: readonly Layer[] = ['frame', 'eth', 'vlan', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6'];

const PROTOCOL_DESCRIPTIONS: Record<Layer, string> = {
  frame: 'every packet',
  eth: 'an Ethernet header (every packet on an Ethernet device)',
  vlan: 'at least one 802.1Q / 802.1ad tag in the packet',
  ip: 'IPv4',
  ipv6: 'IPv6',
  tcp: 'TCP (IPv4 first fragments and IPv6)',
  udp: 'UDP (IPv4 first fragments and IPv6)',
  icmp: 'ICMP over IPv4',
  icmpv6: 'ICMPv6',
};

interface FieldSpec {
  offset: number;
  width: FieldDef['width'];
  shift?: number;
  /** Defaults to the whole container. */
  mask?: number;
  scale?: number;
  kind?: FieldKind;
  writable?: boolean;
  covers?: ChecksumCover[];
  either?: [string, string];
  special?: FieldDef['special'];
  description: string;
}

function containerMask(width: FieldDef['width']): number {
  return width === 1 ? 0xff : width === 2 ? 0xffff : width === 4 ? 0xffffffff : 0;
}

function def(name: string, layer: Layer, spec: FieldSpec): FieldDef {
  const kind = spec.kind ?? 'uint';
  // Addresses wider than 32 bits are compared and copied bytewise: mask and max stay 0.
  const wide = spec.width === 6 || spec.width === 16;
  const mask = wide ? 0 : spec.mask ?? containerMask(spec.width);
  const scale = spec.scale ?? 1;
  const out: FieldDef = {
    name,
    layer,
    offset: spec.offset,
    width: spec.width,
    shift: spec.shift ?? 0,
    mask,
    scale,
    kind,
    max: wide ? 0 : mask * scale,
    writable: spec.writable ?? !spec.either,
    covers: spec.covers ?? [],
    description: spec.description,
  };
  if (spec.either) out.either = spec.either;
  if (spec.special) out.special = spec.special;
  return out;
}

const IP4H: ChecksumCover[] = ['ipv4-header'];
const IP4H_PSEUDO: ChecksumCover[] = ['ipv4-header', 'l4-pseudo'];
const PSEUDO: ChecksumCover[] = ['l4-pseudo'];
const L4: ChecksumCover[] = ['l4'];
const L4_PSEUDO: ChecksumCover[] = ['l4', 'l4-pseudo'];

function tcpFlag(name: string, bit: number, what: string): FieldDef {
  return def(`tcp.flags.${name}`, 'tcp', { offset: 12, width: 2, shift: bit, mask: 1, kind: 'bool', covers: L4, description: what });
}

/** Every field, grouped by layer, outermost first. */
export const FIELDS: readonly FieldDef[] = [
  def('frame.len', 'frame', {
    offset: 0, width: 4, special: 'frame.len', writable: false,
    description: 'Length of the packet in bytes as the hook sees it (at tc egress a GSO packet counts as one)',
  }),

  def('eth.dst', 'eth', { offset: 0, width: 6, kind: 'mac', description: 'Destination MAC address' }),
  def('eth.src', 'eth', { offset: 6, width: 6, kind: 'mac', description: 'Source MAC address' }),
  def('eth.type', 'eth', { offset: 12, width: 2, description: 'EtherType after the MAC addresses (0x8100 when VLAN-tagged)' }),

  def('vlan.priority', 'vlan', { offset: 0, width: 2, shift: 13, mask: 0x7, description: 'Priority code point of the outer tag' }),
  def('vlan.dei', 'vlan', { offset: 0, width: 2, shift: 12, mask: 0x1, kind: 'bool', description: 'Drop eligible indicator of the outer tag' }),
  def('vlan.id', 'vlan', { offset: 0, width: 2, mask: 0xfff, description: 'VLAN identifier of the outer tag' }),
  def('vlan.etype', 'vlan', { offset: 2, width: 2, description: 'EtherType after the outer tag' }),

  def('ip.version', 'ip', { offset: 0, width: 1, shift: 4, mask: 0xf, covers: IP4H, description: 'IP version (4)' }),
  def('ip.hdr_len', 'ip', {
    offset: 0, width: 1, mask: 0xf, scale: 4, covers: IP4H,
    description: 'Header length in bytes (4 × IHL): 20 without options',
  }),
  def('ip.dsfield', 'ip', { offset: 1, width: 1, covers: IP4H, description: 'Differentiated services byte (DSCP and ECN)' }),
  def('ip.dsfield.dscp', 'ip', { offset: 1, width: 1, shift: 2, mask: 0x3f, covers: IP4H, description: 'Differentiated services code point' }),
  def('ip.dsfield.ecn', 'ip', { offset: 1, width: 1, mask: 0x3, covers: IP4H, description: 'Explicit congestion notification (3: congestion experienced)' }),
  def('ip.len', 'ip', { offset: 2, width: 2, covers: IP4H_PSEUDO, description: 'Total length of the IP packet in bytes' }),
  def('ip.id', 'ip', { offset: 4, width: 2, covers: IP4H, description: 'Identification' }),
  def('ip.flags.rb', 'ip', { offset: 6, width: 2, shift: 15, mask: 1, kind: 'bool', covers: IP4H, description: 'Reserved (evil) bit' }),
  def('ip.flags.df', 'ip', { offset: 6, width: 2, shift: 14, mask: 1, kind: 'bool', covers: IP4H, description: "Don't fragment" }),
  def('ip.flags.mf', 'ip', { offset: 6, width: 2, shift: 13, mask: 1, kind: 'bool', covers: IP4H, description: 'More fragments' }),
  def('ip.frag_offset', 'ip', {
    offset: 6, width: 2, mask: 0x1fff, covers: IP4H,
    description: 'Fragment offset in 8-byte units, as Wireshark 4 shows it (185 = byte 1480)',
  }),
  def('ip.ttl', 'ip', { offset: 8, width: 1, covers: IP4H, description: 'Time to live' }),
  def('ip.proto', 'ip', { offset: 9, width: 1, covers: IP4H_PSEUDO, description: 'Protocol of the payload (1 ICMP, 6 TCP, 17 UDP)' }),
  def('ip.checksum', 'ip', { offset: 10, width: 2, description: 'Header checksum (setting it leaves it as written)' }),
  def('ip.src', 'ip', { offset: 12, width: 4, kind: 'ipv4', covers: IP4H_PSEUDO, description: 'Source address' }),
  def('ip.dst', 'ip', { offset: 16, width: 4, kind: 'ipv4', covers: IP4H_PSEUDO, description: 'Destination address' }),
  def('ip.addr', 'ip', {
    offset: 12, width: 4, kind: 'ipv4', either: ['ip.src', 'ip.dst'],
    description: 'Source or destination address (match only)',
  }),

  def('ipv6.version', 'ipv6', { offset: 0, width: 4, shift: 28, mask: 0xf, description: 'IP version (6)' }),
  def('ipv6.tclass', 'ipv6', { offset: 0, width: 4, shift: 20, mask: 0xff, description: 'Traffic class (DSCP and ECN)' }),
  def('ipv6.tclass.dscp', 'ipv6', { offset: 0, width: 4, shift: 22, mask: 0x3f, description: 'Differentiated services code point' }),
  def('ipv6.tclass.ecn', 'ipv6', { offset: 0, width: 4, shift: 20, mask: 0x3, description: 'Explicit congestion notification' }),
  def('ipv6.flow', 'ipv6', { offset: 0, width: 4, mask: 0xfffff, description: 'Flow label (20 bits)' }),
  def('ipv6.plen', 'ipv6', { offset: 4, width: 2, covers: PSEUDO, description: 'Payload length in bytes' }),
  def('ipv6.nxt', 'ipv6', { offset: 6, width: 1, covers: PSEUDO, description: 'Next header (the first one after the fixed header)' }),
  def('ipv6.hlim', 'ipv6', { offset: 7, width: 1, description: 'Hop limit' }),
  def('ipv6.src', 'ipv6', { offset: 8, width: 16, kind: 'ipv6', covers: PSEUDO, description: 'Source address' }),
  def('ipv6.dst', 'ipv6', { offset: 24, width: 16, kind: 'ipv6', covers: PSEUDO, description: 'Destination address' }),
  def('ipv6.addr', 'ipv6', {
    offset: 8, width: 16, kind: 'ipv6', either: ['ipv6.src', 'ipv6.dst'],
    description: 'Source or destination address (match only)',
  }),

  def('tcp.srcport', 'tcp', { offset: 0, width: 2, covers: L4, description: 'Source port' }),
  def('tcp.dstport', 'tcp', { offset: 2, width: 2, covers: L4, description: 'Destination port' }),
  def('tcp.port', 'tcp', { offset: 0, width: 2, either: ['tcp.srcport', 'tcp.dstport'], description: 'Source or destination port (match only)' }),
  def('tcp.seq', 'tcp', { offset: 4, width: 4, covers: L4, description: 'Sequence number, raw (Wireshark shows it relative; its tcp.seq_raw is this)' }),
  def('tcp.seq_raw', 'tcp', { offset: 4, width: 4, covers: L4, description: 'Sequence number, raw (same as tcp.seq here)' }),
  def('tcp.ack', 'tcp', { offset: 8, width: 4, covers: L4, description: 'Acknowledgment number, raw (Wireshark shows it relative; its tcp.ack_raw is this)' }),
  def('tcp.ack_raw', 'tcp', { offset: 8, width: 4, covers: L4, description: 'Acknowledgment number, raw (same as tcp.ack here)' }),
  def('tcp.hdr_len', 'tcp', {
    offset: 12, width: 1, shift: 4, mask: 0xf, scale: 4, covers: L4,
    description: 'Header length in bytes (4 × data offset): 20 without options',
  }),
  def('tcp.len', 'tcp', {
    offset: 0, width: 4, special: 'tcp.len', writable: false,
    description: 'Payload length in bytes, as Wireshark computes it: ip.len (or ipv6.plen + 40) minus the IP header with its '
      + 'options or extension headers, minus tcp.hdr_len; ip.len 0 (segmentation offload) counts to the end of the packet. '
      + 'At tc egress a GSO packet counts whole (the length field covers the super-packet). Absent in a first fragment and '
      + 'where the length field leaves no room for the TCP header. A length field past the end of the packet is believed '
      + '(Wireshark stops at the end; a capture cut by a snap length agrees). Match only',
  }),
  def('tcp.flags', 'tcp', {
    offset: 12, width: 2, mask: 0xfff, covers: L4,
    description: 'The 12 flag bits: FIN 0x001, SYN 0x002, RST 0x004, PSH 0x008, ACK 0x010, URG 0x020, ECE 0x040, CWR 0x080, AE 0x100, reserved 0xe00',
  }),
  tcpFlag('fin', 0, 'FIN: no more data from the sender'),
  tcpFlag('syn', 1, 'SYN: synchronize sequence numbers'),
  tcpFlag('reset', 2, 'RST: reset the connection'),
  tcpFlag('push', 3, 'PSH: push'),
  tcpFlag('ack', 4, 'ACK: the acknowledgment number is valid'),
  tcpFlag('urg', 5, 'URG: the urgent pointer is valid'),
  tcpFlag('ece', 6, 'ECE: ECN echo'),
  tcpFlag('cwr', 7, 'CWR: congestion window reduced'),
  tcpFlag('ae', 8, 'AE: accurate ECN (formerly NS)'),
  def('tcp.flags.res', 'tcp', { offset: 12, width: 2, shift: 9, mask: 0x7, covers: L4, description: 'The three reserved bits' }),
  def('tcp.window_size_value', 'tcp', { offset: 14, width: 2, covers: L4, description: 'Window field as sent (before window scaling)' }),
  def('tcp.checksum', 'tcp', { offset: 16, width: 2, description: 'Checksum (setting it leaves it as written)' }),
  def('tcp.urgent_pointer', 'tcp', { offset: 18, width: 2, covers: L4, description: 'Urgent pointer' }),

  def('udp.srcport', 'udp', { offset: 0, width: 2, covers: L4, description: 'Source port' }),
  def('udp.dstport', 'udp', { offset: 2, width: 2, covers: L4, description: 'Destination port' }),
  def('udp.port', 'udp', { offset: 0, width: 2, either: ['udp.srcport', 'udp.dstport'], description: 'Source or destination port (match only)' }),
  def('udp.length', 'udp', { offset: 4, width: 2, covers: L4_PSEUDO, description: 'Length of header and payload in bytes' }),
  def('udp.checksum', 'udp', { offset: 6, width: 2, description: 'Checksum, 0 when unused (setting it leaves it as written)' }),

  def('icmp.type', 'icmp', { offset: 0, width: 1, covers: L4, description: 'Type (0 echo reply, 3 unreachable, 8 echo request, 11 time exceeded)' }),
  def('icmp.code', 'icmp', { offset: 1, width: 1, covers: L4, description: 'Code' }),
  def('icmp.checksum', 'icmp', { offset: 2, width: 2, description: 'Checksum (setting it leaves it as written)' }),
  def('icmp.ident', 'icmp', { offset: 4, width: 2, covers: L4, description: 'Identifier of echo messages (big-endian)' }),
  def('icmp.seq', 'icmp', { offset: 6, width: 2, covers: L4, description: 'Sequence number of echo messages (big-endian)' }),

  def('icmpv6.type', 'icmpv6', { offset: 0, width: 1, covers: L4, description: 'Type (1 unreachable, 3 time exceeded, 128 echo request, 129 echo reply, 135 neighbour solicitation)' }),
  def('icmpv6.code', 'icmpv6', { offset: 1, width: 1, covers: L4, description: 'Code' }),
  def('icmpv6.checksum', 'icmpv6', { offset: 2, width: 2, description: 'Checksum (setting it leaves it as written)' }),
  def('icmpv6.echo.identifier', 'icmpv6', { offset: 4, width: 2, covers: L4, description: 'Identifier of echo messages' }),
  def('icmpv6.echo.sequence_number', 'icmpv6', { offset: 6, width: 2, covers: L4, description: 'Sequence number of echo messages' }),
];

/**
 * Names people type from habit (other tools, older Wireshark), mapped to the field meant.
 * Tried before edit distance, which would not find most of these.
 */
const FAMILIAR_NAMES: Record<string, string> = {
  'ip.dscp': 'ip.dsfield.dscp',
  'ip.ecn': 'ip.dsfield.ecn',
  'ip.tos': 'ip.dsfield',
  'ip.protocol': 'ip.proto',
  'ip.hdr_length': 'ip.hdr_len',
  'ip.ihl': 'ip.hdr_len',
  'ip.df': 'ip.flags.df',
  'ip.mf': 'ip.flags.mf',
  'ip.fragment_offset': 'ip.frag_offset',
  'ip.flags.sf': 'ip.flags.rb',
  'ipv6.hop_limit': 'ipv6.hlim',
  'ipv6.next_header': 'ipv6.nxt',
  'ipv6.payload_length': 'ipv6.plen',
  'ipv6.traffic_class': 'ipv6.tclass',
  'ipv6.flow_label': 'ipv6.flow',
  'ipv6.dscp': 'ipv6.tclass.dscp',
  'tcp.flags.rst': 'tcp.flags.reset',
  'tcp.flags.psh': 'tcp.flags.push',
  'tcp.flags.ns': 'tcp.flags.ae',
  'tcp.window_size': 'tcp.window_size_value',
  'tcp.window': 'tcp.window_size_value',
  'tcp.urgptr': 'tcp.urgent_pointer',
  'tcp.seglen': 'tcp.len',
  'tcp.payload_len': 'tcp.len',
  'tcp.sport': 'tcp.srcport',
  'tcp.dport': 'tcp.dstport',
  'udp.sport': 'udp.srcport',
  'udp.dport': 'udp.dstport',
  'udp.len': 'udp.length',
  'icmp.id': 'icmp.ident',
  'icmp.identifier': 'icmp.ident',
  'icmp.sequence': 'icmp.seq',
  'icmpv6.id': 'icmpv6.echo.identifier',
  'icmpv6.seq': 'icmpv6.echo.sequence_number',
  'vlan.vid': 'vlan.id',
  'vlan.pcp': 'vlan.priority',
  'eth.ethertype': 'eth.type',
  'eth.addr': 'eth.src',
  'frame.length': 'frame.len',
  'frame.cap_len': 'frame.len',
  'ipv4': 'ip',
  'ip6': 'ipv6',
  'icmp6': 'icmpv6',
  'ether': 'eth',
};

/** Optimal string alignment distance: edits, with a swap of neighbours counting as one. */
export function editDistance(a: string, b: string, atMost = Infinity): number {
  // The distance is at least the difference in length: a name far longer than every candidate
  // costs nothing to rule out, where the table below would cost its length times theirs.
  if (Math.abs(a.length - b.length) > atMost) return atMost + 1;
  // Three rows of the table (the transposition looks two rows back), not all of them.
  let before = new Array<number>(b.length + 1).fill(0);
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  let row = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, before[j - 2]! + 1);
      row[j] = v;
    }
    [before, prev, row] = [prev, row, before];
  }
  return prev[b.length]!;
}

/** Which hooks can read a field, and why not. */
export function hookCannotSee(layer: Layer, hook: Hook): string | undefined {
  if (layer === 'vlan' && hook !== 'xdp') {
    // The kernel untags the outer VLAN tag into skb->vlan_tci before tc ingress runs, and a
    // VLAN device hands its tag down as metadata to tc egress: an in-band read would look at
    // the wrong tag or none, and silently never match.
    return `at the tc ${hook} hook the kernel has already moved the outer VLAN tag out of the packet`;
  }
  return undefined;
}

/** The catalog as a lookup structure. One instance (`fieldCatalog`) serves the whole program. */
export class FieldCatalog {
  readonly fields: readonly FieldDef[];
  readonly protocols: readonly Layer[];
  private readonly byName: Map<string, FieldDef>;

  constructor(fields: readonly FieldDef[], protocols: readonly Layer[]) {
    this.fields = fields;
    this.protocols = protocols;
    this.byName = new Map(fields.map((f) => [f.name, f]));
  }

  /** The field with this Wireshark name, or undefined. */
  get(name: string): FieldDef | undefined {
    return this.byName.get(name);
  }

  /** The layer a bare protocol name tests (`tcp` → 'tcp'), or undefined. */
  protocol(name: string): Layer | undefined {
    return (this.protocols as readonly string[]).includes(name) ? (name as Layer) : undefined;
  }

  /** Fields of one layer, in catalog order. */
  layerFields(layer: Layer): FieldDef[] {
    return this.fields.filter((f) => f.layer === layer);
  }

  /**
   * The real name closest to a mistyped one (a field or a protocol name), for "did you mean";
   * undefined when nothing is close enough to be a plausible typo.
   */
  nearestField(name: string): string | undefined {
    // No field name is near a name this long (the lexer refuses longer ones anyway).
    if (name.length > MAX_NAME_LENGTH) return undefined;
    const lower = name.toLowerCase();
    if (this.byName.has(lower) || this.protocol(lower)) return lower;
    const familiar = FAMILIAR_NAMES[lower];
    if (familiar) return familiar;
    const proto = lower.split('.')[0];
    // `tcp.syn` → tcp.flags.syn: the one field of that protocol whose last word is the same.
    // Tried before edit distance, which would offer tcp.seq.
    const last = lower.split('.').pop() ?? '';
    const tails = [...this.byName.keys()].filter((n) => n !== lower && n.split('.')[0] === proto && n.endsWith(`.${last}`));
    if (lower.includes('.') && tails.length === 1) return tails[0];
    let best: string | undefined;
    let bestScore = Infinity;
    for (const c of [...this.byName.keys(), ...this.protocols]) {
      // Same protocol prefix wins ties: `ip.dsc` is more likely ip.* than ipv6.*.
      const score = editDistance(lower, c) + (c.split('.')[0] === proto ? 0 : 0.5);
      if (score < bestScore) {
        bestScore = score;
        best = c;
      }
    }
    const allowed = Math.max(2, Math.floor(lower.length / 4));
    return best !== undefined && bestScore <= allowed ? best : undefined;
  }
}

export const fieldCatalog = new FieldCatalog(FIELDS, PROTOCOLS);

/** The field with this name, or undefined: the FieldLookup the compiler takes. */
export function lookupField(name: string): FieldDef | undefined {
  return fieldCatalog.get(name);
}

/** See FieldCatalog.nearestField. */
export function nearestField(name: string): string | undefined {
  return fieldCatalog.nearestField(name);
}

/** One line describing what a bare protocol name tests, for docs and help. */
export function protocolDescription(layer: Layer): string {
  return PROTOCOL_DESCRIPTIONS[layer];
}
