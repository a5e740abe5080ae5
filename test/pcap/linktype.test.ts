/** Link types: cooked and raw captures become Ethernet frames, the rest is refused clearly. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CaptureError, checkLinkType, linkTypeName, linkTypeSupport, readAllPackets, toEthernet,
  LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_RAW,
} from '../../src/pcap/index.js';
import { fixture } from './helpers.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** The Ethernet frames of the va0 capture, keyed by everything after the destination MAC. */
async function ethernetFramesFromSourceOn(): Promise<Set<string>> {
  const { packets } = await readAllPackets(fixture('tcpdump-us.pcap'));
  return new Set(packets.map((p) => hex(p.data.subarray(6))));
}

for (const [file, linkType] of [['tcpdump-sll.pcap', LINKTYPE_LINUX_SLL], ['tcpdump-sll2.pcap', LINKTYPE_LINUX_SLL2]] as const) {
  test(`${file}: toEthernet gives the frames seen on the Ethernet interface (same source MAC, ethertype, payload)`, async () => {
    const onVeth = await ethernetFramesFromSourceOn();
    const { info, packets } = await readAllPackets(fixture(file));
    assert.equal(info.linkType, linkType);
    const matched = new Set<string>();
    for (const p of packets) {
      const frame = toEthernet(p.data, linkType);
      assert.equal(frame.length, p.caplen - (linkType === LINKTYPE_LINUX_SLL ? 16 : 20) + 14);
      const key = hex(frame.subarray(6));
      if (onVeth.has(key)) matched.add(key);
      const ethertype = (frame[12]! << 8) | frame[13]!;
      assert.ok(ethertype === 0x0800 || ethertype === 0x86dd || ethertype === 0x0806, `ethertype 0x${ethertype.toString(16)}`);
    }
    // Every packet on va0 is in the "any" capture too; lo traffic (zero MACs) is extra.
    assert.equal(matched.size, onVeth.size);
  });
}

test('SLL: broadcast packets get ff:ff:ff:ff:ff:ff, a non-Ethernet protocol is refused', () => {
  const sll = Buffer.alloc(16 + 28);
  sll.writeUInt16BE(1, 0); // PACKET_BROADCAST
  sll.writeUInt16BE(1, 2); // ARPHRD_ETHER
  sll.writeUInt16BE(6, 4);
  Buffer.from('020000000042', 'hex').copy(sll, 6);
  sll.writeUInt16BE(0x0806, 14);
  const frame = toEthernet(sll, LINKTYPE_LINUX_SLL);
  assert.equal(hex(frame.subarray(0, 14)), 'ffffffffffff0200000000420806');
  sll.writeUInt16BE(0x0004, 14); // 802.2 LLC
  assert.throws(() => toEthernet(sll, LINKTYPE_LINUX_SLL, undefined, 'x.pcap'),
    (e: unknown) => e instanceof CaptureError && e.message === 'x.pcap: Linux cooked (SLL) (113) packet with protocol 0x0004 is not an Ethernet payload (802.2 LLC, 802.3, CAN …) and cannot be replayed');
  assert.throws(() => toEthernet(sll.subarray(0, 10), LINKTYPE_LINUX_SLL), /frame of 10 bytes is shorter than its 16-byte link header/);
});

test('raw IP (101, 228, 229) gets zero MACs and the ethertype of its IP version', async () => {
  const { packets } = await readAllPackets(fixture('tcpdump-us.pcap'));
  let v4 = 0;
  let v6 = 0;
  for (const p of packets) {
    const ethertype = (p.data[12]! << 8) | p.data[13]!;
    if (ethertype !== 0x0800 && ethertype !== 0x86dd) continue;
    const ip = p.data.subarray(14);
    const want = `000000000000000000000000${hex(p.data.subarray(12))}`;
    assert.equal(hex(toEthernet(ip, LINKTYPE_RAW)), want);
    assert.equal(hex(toEthernet(ip, ethertype === 0x0800 ? LINKTYPE_IPV4 : LINKTYPE_IPV6)), want);
    if (ethertype === 0x0800) v4 += 1; else v6 += 1;
  }
  assert.ok(v4 > 0 && v6 > 0);
  assert.throws(() => toEthernet(Uint8Array.of(0x50, 0, 0, 0), LINKTYPE_RAW), /IP version 5 cannot be replayed/);
});

test('BSD loopback in either host byte order and OpenBSD loopback', () => {
  const payload = Uint8Array.of(0x45, 0, 0, 20);
  const le = toEthernet(Uint8Array.of(2, 0, 0, 0, ...payload), LINKTYPE_NULL);
  const be = toEthernet(Uint8Array.of(0, 0, 0, 2, ...payload), LINKTYPE_NULL);
  const v6 = toEthernet(Uint8Array.of(30, 0, 0, 0, 0x60, 0, 0, 0), LINKTYPE_NULL);
  const loop = toEthernet(Uint8Array.of(0, 0, 0, 24, 0x60, 0, 0, 0), LINKTYPE_LOOP);
  assert.equal(hex(le), `${'00'.repeat(12)}080045000014`);
  assert.deepEqual(be, le);
  assert.equal(hex(v6.subarray(12)), '86dd60000000');
  assert.equal(hex(loop.subarray(12)), '86dd60000000');
  assert.throws(() => toEthernet(Uint8Array.of(7, 0, 0, 0, 1), LINKTYPE_NULL), /address family 7/);
});

test('Ethernet passes through untouched; a scratch buffer is used when it is large enough', () => {
  const frame = Uint8Array.of(1, 2, 3);
  assert.equal(toEthernet(frame, LINKTYPE_ETHERNET), frame);
  const scratch = new Uint8Array(64);
  const out = toEthernet(Uint8Array.of(0x45, 1, 2), LINKTYPE_RAW, scratch);
  assert.equal(out.buffer, scratch.buffer);
  assert.equal(hex(out), `${'00'.repeat(12)}0800450102`);
  const small = new Uint8Array(4);
  assert.notEqual(toEthernet(Uint8Array.of(0x45, 1, 2), LINKTYPE_RAW, small).buffer, small.buffer);
});

test('unsupported link types are refused by name with what to do', () => {
  assert.equal(linkTypeSupport(1), 'ethernet');
  assert.equal(linkTypeSupport(276), 'convert');
  assert.equal(linkTypeSupport(127), 'unsupported');
  assert.equal(linkTypeName(9999), 'link type 9999');
  for (const fn of [() => checkLinkType(127, 'wifi.pcap'), () => toEthernet(new Uint8Array(40), 127, undefined, 'wifi.pcap')]) {
    assert.throws(fn, (e: unknown) => e instanceof CaptureError
      && e.message === 'wifi.pcap: IEEE 802.11 radiotap (127) is not supported: netmangle replays Ethernet frames'
      && /Ethernet \(1\), Linux cooked SLL \(113\)/.test(e.hint ?? '') && e.exitCode === 2);
  }
  assert.doesNotThrow(() => checkLinkType(113, 'x'));
});
