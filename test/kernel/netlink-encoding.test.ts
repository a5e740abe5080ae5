// Netlink message building and parsing, checked byte by byte against the uapi layouts.
// No kernel needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  MessageBuilder, NLA_F_NESTED, NLM_F, NLMSG, NetlinkError, align4, attrMap, attrString, attrU32, parseAck, parseAttrs,
  parseMessages,
} from '../../src/kernel/netlink.js';
import {
  IFLA, IFLA_XDP, RTM, TCA, TCA_BPF, clsactParent, filterInfo, ifinfomsg, parseFilterMessage, parseLinkMessage, tcmsg,
} from '../../src/kernel/rtnetlink.js';
import { inNetns } from '../../src/kernel/netns.js';

test('nlmsghdr carries length, type, flags, seq and port id', () => {
  const msg = new MessageBuilder(RTM.GETLINK, NLM_F.REQUEST, ifinfomsg(7)).build(0x01020304, 99);
  assert.equal(msg.length, 16 + 16);
  assert.equal(msg.readUInt32LE(0), 32);
  assert.equal(msg.readUInt16LE(4), 18);
  assert.equal(msg.readUInt16LE(6), NLM_F.REQUEST);
  assert.equal(msg.readUInt32LE(8), 0x01020304);
  assert.equal(msg.readUInt32LE(12), 99);
  assert.equal(msg.readInt32LE(16 + 4), 7, 'ifi_index at offset 4 of ifinfomsg');
});

test('attributes are padded to 4 bytes, the length field excludes the padding', () => {
  const msg = new MessageBuilder(RTM.NEWQDISC, 0).str(TCA.KIND, 'ab').u32(5, 0xdeadbeef).build(1);
  // "ab\0" -> nla_len 7, padded to 8; then a u32 attribute of 8 bytes.
  assert.equal(msg.length, 16 + 8 + 8);
  assert.equal(msg.readUInt16LE(16), 7);
  assert.equal(msg.readUInt16LE(18), TCA.KIND);
  assert.equal(msg.toString('latin1', 20, 23), 'ab\0');
  assert.equal(msg[23], 0, 'padding is zero');
  assert.equal(msg.readUInt16LE(24), 8);
  assert.equal(msg.readUInt32LE(28), 0xdeadbeef);
});

test('a nest has the total length of its children and the NESTED flag when asked', () => {
  const msg = new MessageBuilder(RTM.SETLINK, 0, ifinfomsg(3))
    .nest(IFLA.XDP, (b) => b.s32(IFLA_XDP.FD, -1).u32(IFLA_XDP.FLAGS, 2), true)
    .build(1);
  const nestAt = 32;
  assert.equal(msg.readUInt16LE(nestAt), 4 + 8 + 8);
  assert.equal(msg.readUInt16LE(nestAt + 2), IFLA.XDP | NLA_F_NESTED);
  const outer = parseAttrs(msg, 32);
  assert.equal(outer.length, 1);
  assert.equal(outer[0]?.type, IFLA.XDP, 'the NESTED bit is masked off when parsing');
  const inner = attrMap(outer[0]!.data);
  assert.equal(inner.get(IFLA_XDP.FD)?.readInt32LE(0), -1);
  assert.equal(attrU32(inner.get(IFLA_XDP.FLAGS)), 2);
});

test('tcmsg and filter info put priority and protocol (network order) where tc expects', () => {
  assert.equal(clsactParent('ingress'), 0xfffffff2);
  assert.equal(clsactParent('egress'), 0xfffffff3);
  assert.equal(filterInfo(1), 0x00010300, 'prio 1, ETH_P_ALL (0x0003) as big-endian 0x0300');
  assert.equal(filterInfo(49152, 0x0800), (49152 << 16 | 0x0008) >>> 0);
  const t = tcmsg(5, 1, 0xfffffff3, filterInfo(2));
  assert.equal(t.length, 20);
  assert.equal(t.readInt32LE(4), 5);
  assert.equal(t.readUInt32LE(8), 1);
  assert.equal(t.readUInt32LE(12), 0xfffffff3);
  assert.equal(t.readUInt32LE(16), 0x00020300);
});

test('parseMessages splits a datagram and rejects a length past the end', () => {
  const a = new MessageBuilder(NLMSG.DONE, NLM_F.MULTI).attr(1, Buffer.from([1, 2, 3])).build(10);
  const b = new MessageBuilder(RTM.NEWLINK, 0, ifinfomsg(4)).build(11);
  const msgs = parseMessages(Buffer.concat([a, b]));
  assert.deepEqual(msgs.map((m) => [m.type, m.seq, m.flags]), [[NLMSG.DONE, 10, NLM_F.MULTI], [RTM.NEWLINK, 11, 0]]);
  assert.equal(msgs[1]?.payload.length, 16);
  const broken = Buffer.from(b);
  broken.writeUInt32LE(200, 0);
  assert.throws(() => parseMessages(broken), /malformed netlink message/);
});

/** An NLMSG_ERROR payload as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK on. */
function errorPayload(errno: number, text?: string): { payload: Buffer; flags: number } {
  const echoedHeader = new MessageBuilder(RTM.NEWTFILTER, NLM_F.REQUEST).build(5).subarray(0, 16);
  const head = Buffer.alloc(4);
  head.writeInt32LE(-errno, 0);
  if (text === undefined) return { payload: Buffer.concat([head, echoedHeader]), flags: NLM_F.CAPPED };
  const tlvs = new MessageBuilder(0, 0).str(1, text).u32(2, 36).build(0).subarray(16);
  return { payload: Buffer.concat([head, echoedHeader, tlvs]), flags: NLM_F.CAPPED | NLM_F.ACK_TLVS };
}

test('parseAck reads errno and the extended-ack text and offset', () => {
  const ok = errorPayload(0);
  assert.deepEqual(parseAck(ok.payload, ok.flags), { errno: 0 });
  const bad = errorPayload(17, 'Exclusivity flag on, cannot modify');
  assert.deepEqual(parseAck(bad.payload, bad.flags), { errno: 17, message: 'Exclusivity flag on, cannot modify', offset: 36 });
  // Without ACK_TLVS the bytes after the header are not attributes.
  assert.deepEqual(parseAck(bad.payload, NLM_F.CAPPED), { errno: 17 });
});

test('parseAck skips a whole echoed request when the ack is not capped', () => {
  const request = new MessageBuilder(RTM.NEWQDISC, NLM_F.REQUEST, tcmsg(1, 0, 0)).str(TCA.KIND, 'clsact').build(9);
  const head = Buffer.alloc(4);
  head.writeInt32LE(-22, 0);
  const tlvs = new MessageBuilder(0, 0).str(1, 'Unknown qdisc').build(0).subarray(16);
  const ack = parseAck(Buffer.concat([head, request, tlvs]), NLM_F.ACK_TLVS);
  assert.equal(ack.errno, 22);
  assert.equal(ack.message, 'Unknown qdisc');
});

test('NetlinkError is one line naming the operation, errno and the kernel text, with a hint', () => {
  const err = new NetlinkError('add clsact qdisc to ifindex 3', 1, 'Operation not permitted');
  assert.equal(err.message, 'add clsact qdisc to ifindex 3: EPERM (Operation not permitted)');
  assert.match(err.hint ?? '', /root/);
  assert.equal(err.code, 'EPERM');
  assert.ok(!err.message.includes('\n'));
});

test('parseLinkMessage decodes name, flags, mtu, kind and the nested XDP state', () => {
  const m = new MessageBuilder(RTM.NEWLINK, 0, ifinfomsg(12, 0x1043))
    .str(IFLA.IFNAME, 'veth0')
    .u32(IFLA.MTU, 1500)
    .attr(IFLA.ADDRESS, Buffer.from([2, 0, 0, 0, 0, 0xab]))
    .nest(IFLA.LINKINFO, (b) => b.str(1, 'veth'))
    .nest(IFLA.XDP, (b) => b.u8(IFLA_XDP.ATTACHED, 2).u32(IFLA_XDP.PROG_ID, 77))
    .build(1);
  const [msg] = parseMessages(m);
  const link = parseLinkMessage(msg!);
  assert.equal(link.ifindex, 12);
  assert.equal(link.name, 'veth0');
  assert.equal(link.up, true);
  assert.equal(link.mtu, 1500);
  assert.equal(link.kind, 'veth');
  assert.equal(link.address, '02:00:00:00:00:ab');
  assert.deepEqual(link.xdp, { attached: 'skb', progId: 77, skbProgId: 77 });
});

test('parseFilterMessage decodes a cls_bpf filter and skips chain heads and other kinds', () => {
  const parent = clsactParent('egress');
  const filter = new MessageBuilder(RTM.NEWTFILTER, 0, tcmsg(4, 1, parent, filterInfo(3)))
    .str(TCA.KIND, 'bpf')
    .nest(TCA.OPTIONS, (b) => b.u32(TCA_BPF.ID, 321).str(TCA_BPF.NAME, 'nm_egress').u32(TCA_BPF.FLAGS, 1)
      .attr(TCA_BPF.TAG, Buffer.from('0102030405060708', 'hex')))
    .build(1);
  const f = parseFilterMessage(parseMessages(filter)[0]!, 'egress');
  assert.deepEqual(f, {
    ifindex: 4, direction: 'egress', prio: 3, handle: 1, protocol: 3, directAction: true, progId: 321, name: 'nm_egress',
    tag: '0102030405060708',
  });
  const head = new MessageBuilder(RTM.NEWTFILTER, 0, tcmsg(4, 0, parent, filterInfo(3))).str(TCA.KIND, 'bpf').build(1);
  assert.equal(parseFilterMessage(parseMessages(head)[0]!, 'egress'), undefined);
  const u32 = new MessageBuilder(RTM.NEWTFILTER, 0, tcmsg(4, 0x800, parent, filterInfo(3))).str(TCA.KIND, 'u32').build(1);
  assert.equal(parseFilterMessage(parseMessages(u32)[0]!, 'egress'), undefined);
});

test('any list of attributes survives build then parse (property)', () => {
  fc.assert(fc.property(
    fc.array(fc.record({ type: fc.integer({ min: 1, max: 0x3fff }), data: fc.uint8Array({ maxLength: 40 }) }), { maxLength: 12 }),
    fc.integer({ min: 0, max: 0xffffffff }),
    (attrs, seq) => {
      const b = new MessageBuilder(RTM.NEWLINK, NLM_F.ACK, ifinfomsg(1));
      for (const a of attrs) b.attr(a.type, Buffer.from(a.data));
      const bytes = b.build(seq);
      assert.equal(bytes.length % 4, 0);
      const [msg] = parseMessages(bytes);
      assert.equal(msg?.seq, seq);
      const back = parseAttrs(msg!.payload, 16);
      assert.deepEqual(back.map((a) => [a.type, [...a.data]]), attrs.map((a) => [a.type, [...a.data]]));
      assert.equal(bytes.length, 32 + attrs.reduce((n, a) => n + align4(4 + a.data.length), 0));
    },
  ));
});

test('attrString stops at the NUL', () => {
  assert.equal(attrString(Buffer.from('eth0\0\0\0', 'latin1')), 'eth0');
  assert.equal(attrString(Buffer.from('noterm', 'latin1')), 'noterm');
  assert.equal(attrString(undefined), undefined);
});

test('inNetns refuses async functions and returned promises before they can leak', () => {
  assert.throws(() => inNetns('anything', async () => 1), /must be synchronous/);
  assert.throws(() => inNetns(undefined, () => Promise.resolve(1)), /returned a promise/);
  assert.equal(inNetns(undefined, () => 42), 42);
  assert.throws(() => inNetns('../etc', () => 1), /invalid network namespace name/);
});
