import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FIELDS, fieldCatalog, HEADER_SIZE, lookupField, nearestField, PROTOCOLS, editDistance } from '../../src/rules/catalog.js';
import type { FieldDef } from '../../src/rules/ast.js';

/** The fields the language promises (the list), all of which must exist. */
const REQUIRED = [
  'eth.src', 'eth.dst', 'eth.type', 'vlan.id', 'vlan.priority',
  'ip.version', 'ip.hdr_len', 'ip.dsfield.dscp', 'ip.dsfield.ecn', 'ip.len', 'ip.id', 'ip.flags.df', 'ip.flags.mf',
  'ip.frag_offset', 'ip.ttl', 'ip.proto', 'ip.checksum', 'ip.src', 'ip.dst', 'ip.addr',
  'ipv6.tclass', 'ipv6.flow', 'ipv6.plen', 'ipv6.nxt', 'ipv6.hlim', 'ipv6.src', 'ipv6.dst', 'ipv6.addr',
  'tcp.srcport', 'tcp.dstport', 'tcp.port', 'tcp.seq', 'tcp.ack', 'tcp.hdr_len', 'tcp.flags',
  'tcp.flags.fin', 'tcp.flags.syn', 'tcp.flags.reset', 'tcp.flags.push', 'tcp.flags.ack', 'tcp.flags.urg',
  'tcp.flags.ece', 'tcp.flags.cwr', 'tcp.window_size_value', 'tcp.checksum', 'tcp.urgent_pointer',
  'udp.srcport', 'udp.dstport', 'udp.port', 'udp.length', 'udp.checksum',
  'icmp.type', 'icmp.code', 'icmp.checksum', 'icmp.ident', 'icmp.seq',
  'icmpv6.type', 'icmpv6.code', 'icmpv6.checksum', 'frame.len',
];

/** Reads a field's user-visible value from `bytes`, its layer starting at `base`, as the compiler does. */
function decode(bytes: Uint8Array, base: number, f: FieldDef): number {
  let container = 0;
  for (let i = 0; i < f.width; i++) container = container * 256 + bytes[base + f.offset + i]!;
  return (Math.floor(container / 2 ** f.shift) % (f.mask + 1)) * f.scale;
}

test('every field the language promises is in the catalog', () => {
  for (const name of REQUIRED) assert.ok(lookupField(name), `${name} missing`);
  assert.deepEqual([...PROTOCOLS].sort(), ['eth', 'frame', 'icmp', 'icmpv6', 'ip', 'ipv6', 'tcp', 'udp', 'vlan']);
});

test('names are unique and start with their layer', () => {
  const names = FIELDS.map((f) => f.name);
  assert.equal(new Set(names).size, names.length);
  for (const f of FIELDS) assert.ok(f.name.startsWith(`${f.layer}.`), f.name);
});

test('every field lies inside its layer header', () => {
  for (const f of FIELDS) {
    if (f.layer === 'frame') continue;
    assert.ok(f.offset >= 0 && f.offset + f.width <= HEADER_SIZE[f.layer], `${f.name}: ${f.offset}+${f.width} > ${HEADER_SIZE[f.layer]}`);
  }
});

test('masks, shifts, scales and maxima agree', () => {
  for (const f of FIELDS) {
    if (f.width === 6 || f.width === 16) {
      assert.ok((f.kind === 'mac' && f.width === 6) || (f.kind === 'ipv6' && f.width === 16), f.name);
      assert.equal(f.mask, 0, f.name);
      assert.equal(f.max, 0, f.name);
      continue;
    }
    // A contiguous run of low bits, shifted into the container without spilling out of it.
    assert.ok(f.mask > 0 && Number.isInteger(Math.log2(f.mask + 1)), `${f.name}: mask ${f.mask}`);
    assert.ok((f.mask + 1) * 2 ** f.shift <= 2 ** (8 * f.width), `${f.name}: mask spills out of ${f.width} bytes`);
    assert.equal(f.max, f.mask * f.scale, f.name);
    if (f.kind === 'bool') assert.equal(f.mask, 1, f.name);
    if (f.kind === 'ipv4') assert.equal(f.width, 4, f.name);
  }
});

test('match-only and special fields are not writable; checksums are, and cover nothing', () => {
  for (const f of FIELDS) {
    if (f.either) {
      assert.equal(f.writable, false, f.name);
      for (const half of f.either) {
        const h = lookupField(half);
        assert.ok(h && h.layer === f.layer && h.kind === f.kind && h.width === f.width && !h.either, `${f.name} → ${half}`);
      }
    }
    if (f.name.endsWith('.checksum')) {
      assert.equal(f.writable, true, f.name);
      assert.deepEqual(f.covers, [], f.name);
    }
  }
  assert.equal(lookupField('frame.len')!.writable, false);
  assert.equal(lookupField('frame.len')!.special, 'frame.len');
  assert.deepEqual(lookupField('ip.src')!.covers, ['ipv4-header', 'l4-pseudo']);
  assert.deepEqual(lookupField('ipv6.hlim')!.covers, []);
  assert.deepEqual(lookupField('tcp.flags.push')!.covers, ['l4']);
});

test('fields decode a real IPv4/TCP header with the values tshark 4.0 shows', () => {
  // 802.1Q priority 3 VLAN 5; IPv4 with one option word, DSCP 46, MF set, offset 185; TCP with
  // a 24-byte header and flags 0x1d2 (SYN ACK ECE CWR AE).
  const frame = Uint8Array.from([
    0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0x81, 0x00,
    0x60, 0x05, 0x08, 0x00,
    0x46, 0xb9, 0x00, 0x30, 0x00, 0x01, 0x20, 0xb9, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2, 1, 1, 1, 0,
    0x00, 0x14, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x61, 0xd2, 0x00, 0x64, 0, 0, 0, 0,
  ]);
  const vlan = 14;
  const ip = 18;
  const tcp = 42;
  const want: Array<[string, number, number]> = [
    ['eth.type', 0, 0x8100], ['vlan.id', vlan, 5], ['vlan.priority', vlan, 3], ['vlan.etype', vlan, 0x0800],
    ['ip.version', ip, 4], ['ip.hdr_len', ip, 24], ['ip.dsfield.dscp', ip, 46], ['ip.dsfield.ecn', ip, 1],
    ['ip.flags.mf', ip, 1], ['ip.flags.df', ip, 0], ['ip.frag_offset', ip, 185], ['ip.ttl', ip, 64], ['ip.proto', ip, 6],
    ['ip.len', ip, 48], ['ip.src', ip, 0xc6120001],
    ['tcp.srcport', tcp, 20], ['tcp.dstport', tcp, 80], ['tcp.seq', tcp, 1], ['tcp.ack', tcp, 2], ['tcp.hdr_len', tcp, 24],
    ['tcp.flags', tcp, 0x1d2], ['tcp.flags.syn', tcp, 1], ['tcp.flags.ack', tcp, 1], ['tcp.flags.push', tcp, 0],
    ['tcp.flags.ae', tcp, 1], ['tcp.flags.cwr', tcp, 1], ['tcp.flags.ece', tcp, 1], ['tcp.flags.fin', tcp, 0],
    ['tcp.flags.res', tcp, 0], ['tcp.window_size_value', tcp, 100],
  ];
  for (const [name, base, value] of want) assert.equal(decode(frame, base, lookupField(name)!), value, name);
});

test('IPv6 fields decode the traffic class and the 20-bit flow label', () => {
  const hdr = Uint8Array.from([0x6b, 0x81, 0x23, 0x45, 0, 8, 58, 64, ...new Array<number>(32).fill(0)]);
  assert.equal(decode(hdr, 0, lookupField('ipv6.version')!), 6);
  assert.equal(decode(hdr, 0, lookupField('ipv6.tclass')!), 0xb8);
  assert.equal(decode(hdr, 0, lookupField('ipv6.tclass.dscp')!), 46);
  assert.equal(decode(hdr, 0, lookupField('ipv6.flow')!), 0x12345);
  assert.equal(decode(hdr, 0, lookupField('ipv6.plen')!), 8);
  assert.equal(decode(hdr, 0, lookupField('ipv6.nxt')!), 58);
  assert.equal(decode(hdr, 0, lookupField('ipv6.hlim')!), 64);
});

test('nearestField suggests the field meant', () => {
  assert.equal(nearestField('ip.tll'), 'ip.ttl');
  assert.equal(nearestField('tcp.dstprot'), 'tcp.dstport');
  assert.equal(nearestField('tcp.syn'), 'tcp.flags.syn');
  assert.equal(nearestField('tcp.flags.rst'), 'tcp.flags.reset');
  assert.equal(nearestField('ip.dscp'), 'ip.dsfield.dscp');
  assert.equal(nearestField('ipv6.hop_limit'), 'ipv6.hlim');
  assert.equal(nearestField('udpp'), 'udp');
  assert.equal(nearestField('IP.TTL'), 'ip.ttl');
  assert.equal(nearestField('completely.different'), undefined);
  assert.equal(fieldCatalog.protocol('tcp'), 'tcp');
  assert.equal(fieldCatalog.protocol('tcp.port'), undefined);
});

test('editDistance counts a swap of neighbours as one edit', () => {
  assert.equal(editDistance('ttl', 'tlt'), 1);
  assert.equal(editDistance('abc', 'abc'), 0);
  assert.equal(editDistance('', 'abc'), 3);
  assert.equal(editDistance('kitten', 'sitting'), 3);
});
