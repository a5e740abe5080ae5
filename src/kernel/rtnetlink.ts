/**
 * NETLINK_ROUTE requests netmangle needs: interface lookup (RTM_GETLINK), legacy XDP attach
 * through IFLA_XDP (RTM_SETLINK), and tc: the clsact qdisc and cls_bpf direct-action filters.
 *
 * Every function here works in the network namespace current when it is called (it opens its
 * own socket unless given one); wrap calls in `inNetns()` for another namespace.
 *
 * Constants follow include/uapi/linux/{rtnetlink,if_link,pkt_sched,pkt_cls}.h.
 */
import { NetmangleError, NotFoundError } from '../errors.js';
import { ipCommand } from './netns.js';
import {
  MessageBuilder, NLM_F, NetlinkError, NetlinkSocket, attrMap, attrString, attrU32, attrU8,
  type NetlinkMessage,
} from './netlink.js';

export const RTM = {
  NEWLINK: 16, DELLINK: 17, GETLINK: 18, SETLINK: 19,
  NEWQDISC: 36, DELQDISC: 37, GETQDISC: 38,
  NEWTFILTER: 44, DELTFILTER: 45, GETTFILTER: 46,
} as const;

export const IFLA = { ADDRESS: 1, IFNAME: 3, MTU: 4, LINK: 5, OPERSTATE: 16, LINKINFO: 18, STATS64: 23, XDP: 43 } as const;
export const IFLA_INFO_KIND = 1;
export const IFLA_XDP = {
  FD: 1, ATTACHED: 2, FLAGS: 3, PROG_ID: 4, DRV_PROG_ID: 5, SKB_PROG_ID: 6, HW_PROG_ID: 7, EXPECTED_FD: 8,
} as const;
export const XDP_FLAGS = { UPDATE_IF_NOEXIST: 1, SKB_MODE: 2, DRV_MODE: 4, HW_MODE: 8, REPLACE: 16 } as const;
/** enum in if_link.h: what IFLA_XDP_ATTACHED reports. */
export const XDP_ATTACHED = ['none', 'drv', 'skb', 'hw', 'multi'] as const;
export type XdpAttachedMode = (typeof XDP_ATTACHED)[number];

export const TCA = { KIND: 1, OPTIONS: 2, CHAIN: 11 } as const;
export const TCA_BPF = { CLASSID: 3, FD: 6, NAME: 7, FLAGS: 8, FLAGS_GEN: 9, TAG: 10, ID: 11 } as const;
export const TCA_BPF_FLAG_ACT_DIRECT = 1;
export const TC_H_CLSACT = 0xfffffff1;
export const TC_H_MIN_INGRESS = 0xfff2;
export const TC_H_MIN_EGRESS = 0xfff3;
/** The clsact qdisc's own handle, ffff:0. */
export const CLSACT_HANDLE = 0xffff0000;
export const ETH_P_ALL = 0x0003;
const AF_UNSPEC = 0;
const IFF_UP = 0x1;

/** TC_H_MAKE(major, minor) */
export function tcHandle(major: number, minor: number): number {
  return ((major & 0xffff0000) | (minor & 0x0000ffff)) >>> 0;
}

export type TcDirection = 'ingress' | 'egress';

/** The tc parent of a clsact direction: ffff:fff2 or ffff:fff3. */
export function clsactParent(dir: TcDirection): number {
  return tcHandle(TC_H_CLSACT, dir === 'ingress' ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS);
}

/** struct ifinfomsg (16 bytes). */
export function ifinfomsg(ifindex = 0, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(AF_UNSPEC, 0);
  b.writeInt32LE(ifindex, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

/** struct tcmsg (20 bytes). `info` is (prio << 16 | protocol in network order) for filters. */
export function tcmsg(ifindex: number, handle: number, parent: number, info = 0): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt8(AF_UNSPEC, 0);
  b.writeInt32LE(ifindex, 4);
  b.writeUInt32LE(handle >>> 0, 8);
  b.writeUInt32LE(parent >>> 0, 12);
  b.writeUInt32LE(info >>> 0, 16);
  return b;
}

/** tcm_info of a filter: priority in the top half, protocol (network order) in the bottom. */
export function filterInfo(prio: number, protocol = ETH_P_ALL): number {
  const protoNetworkOrder = ((protocol & 0xff) << 8) | ((protocol >> 8) & 0xff);
  return ((prio & 0xffff) << 16 | protoNetworkOrder) >>> 0;
}

function withSocket<T>(sock: NetlinkSocket | undefined, fn: (s: NetlinkSocket) => T): T {
  if (sock) return fn(sock);
  const own = NetlinkSocket.open();
  try {
    return fn(own);
  } finally {
    own.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Links

export interface XdpState {
  attached: XdpAttachedMode;
  /** The single attached program (IFLA_XDP_PROG_ID), when there is exactly one. */
  progId?: number;
  drvProgId?: number;
  skbProgId?: number;
  hwProgId?: number;
}

export interface LinkInfo {
  ifindex: number;
  name: string;
  /** IFF_* flags. */
  flags: number;
  up: boolean;
  mtu?: number;
  /** IFLA_INFO_KIND, e.g. "veth", "bridge"; absent for physical devices and lo. */
  kind?: string;
  /** The peer's or lower device's ifindex (possibly in another namespace). */
  link?: number;
  address?: string;
  /** Packets the device dropped on transmit (rtnl_link_stats64 tx_dropped), when reported. */
  txDropped?: number;
  xdp: XdpState;
}

function parseXdp(data: Buffer | undefined): XdpState {
  if (!data) return { attached: 'none' };
  const a = attrMap(data);
  const mode = attrU8(a.get(IFLA_XDP.ATTACHED)) ?? 0;
  const state: XdpState = { attached: XDP_ATTACHED[mode] ?? 'none' };
  const progId = attrU32(a.get(IFLA_XDP.PROG_ID));
  if (progId) state.progId = progId;
  const drv = attrU32(a.get(IFLA_XDP.DRV_PROG_ID));
  if (drv) state.drvProgId = drv;
  const skb = attrU32(a.get(IFLA_XDP.SKB_PROG_ID));
  if (skb) state.skbProgId = skb;
  const hw = attrU32(a.get(IFLA_XDP.HW_PROG_ID));
  if (hw) state.hwProgId = hw;
  // Not in MULTI mode the single program's id is only in PROG_ID: fill the per-mode id too.
  if (state.progId !== undefined) {
    if (state.attached === 'drv') state.drvProgId ??= state.progId;
    if (state.attached === 'skb') state.skbProgId ??= state.progId;
    if (state.attached === 'hw') state.hwProgId ??= state.progId;
  }
  return state;
}

/** Decodes one RTM_NEWLINK message. */
export function parseLinkMessage(m: NetlinkMessage): LinkInfo {
  const p = m.payload;
  const ifindex = p.readInt32LE(4);
  const flags = p.readUInt32LE(8);
  const attrs = attrMap(p, 16);
  const info: LinkInfo = {
    ifindex,
    name: attrString(attrs.get(IFLA.IFNAME)) ?? `if${ifindex}`,
    flags,
    up: (flags & IFF_UP) !== 0,
    xdp: parseXdp(attrs.get(IFLA.XDP)),
  };
  const mtu = attrU32(attrs.get(IFLA.MTU));
  if (mtu !== undefined) info.mtu = mtu;
  const link = attrU32(attrs.get(IFLA.LINK));
  if (link !== undefined) info.link = link;
  const stats = attrs.get(IFLA.STATS64);
  // struct rtnl_link_stats64: rx/tx packets, bytes, errors, then rx_dropped, tx_dropped (u64 each).
  if (stats && stats.length >= 64) info.txDropped = Number(stats.readBigUInt64LE(56));
  const addr = attrs.get(IFLA.ADDRESS);
  if (addr && addr.length) info.address = [...addr].map((x) => x.toString(16).padStart(2, '0')).join(':');
  const linkinfo = attrs.get(IFLA.LINKINFO);
  if (linkinfo) {
    const kind = attrString(attrMap(linkinfo).get(IFLA_INFO_KIND));
    if (kind) info.kind = kind;
  }
  return info;
}

/**
 * One interface by name or index, or undefined when there is none in this namespace.
 * (RTM_GETLINK with IFLA_IFNAME; ENODEV means "no such interface".)
 */
export function getLink(which: string | number, sock?: NetlinkSocket): LinkInfo | undefined {
  return withSocket(sock, (s) => {
    const msg = typeof which === 'number'
      ? new MessageBuilder(RTM.GETLINK, 0, ifinfomsg(which))
      : new MessageBuilder(RTM.GETLINK, 0, ifinfomsg(0)).str(IFLA.IFNAME, which);
    try {
      const replies = s.request(msg, `look up interface ${which}`);
      const reply = replies.find((r) => r.type === RTM.NEWLINK);
      return reply ? parseLinkMessage(reply) : undefined;
    } catch (err) {
      if (err instanceof NetlinkError && (err.code === 'ENODEV' || err.code === 'ENOENT')) return undefined;
      throw err;
    }
  });
}

/** Every interface in this namespace, by ifindex. */
export function dumpLinks(sock?: NetlinkSocket): LinkInfo[] {
  return withSocket(sock, (s) => {
    const replies = s.dump(new MessageBuilder(RTM.GETLINK, 0, ifinfomsg(0)), 'list interfaces');
    return replies.filter((r) => r.type === RTM.NEWLINK).map(parseLinkMessage).sort((a, b) => a.ifindex - b.ifindex);
  });
}

// ---------------------------------------------------------------------------------------------
// Legacy XDP (IFLA_XDP): attached until detached, so a crash leaves the program in place.

export type XdpMode = 'skb' | 'drv';

function modeFlag(mode: XdpMode): number {
  return mode === 'skb' ? XDP_FLAGS.SKB_MODE : XDP_FLAGS.DRV_MODE;
}

function setXdp(ifindex: number, fd: number, flags: number, operation: string, sock?: NetlinkSocket): void {
  withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.SETLINK, 0, ifinfomsg(ifindex)).nest(IFLA.XDP, (b) => {
      b.s32(IFLA_XDP.FD, fd);
      if (flags) b.u32(IFLA_XDP.FLAGS, flags);
    }, true);
    s.request(msg, operation);
  });
}

/**
 * Attaches an XDP program through netlink (the pre-5.9 way, no link object).
 * Without `replace`, a program already there makes this fail with EBUSY.
 */
export function attachXdpNetlink(ifindex: number, progFd: number, opts: { mode: XdpMode; replace?: boolean }, sock?: NetlinkSocket): void {
  const flags = modeFlag(opts.mode) | (opts.replace ? 0 : XDP_FLAGS.UPDATE_IF_NOEXIST);
  setXdp(ifindex, progFd, flags, `attach XDP program (${opts.mode} mode) to ifindex ${ifindex} through netlink`, sock);
}

/**
 * Detaches whatever XDP program netlink attached in `mode` (default: the mode the query
 * reports). Returns false when there was nothing to detach.
 */
export function detachXdpNetlink(ifindex: number, opts: { mode?: XdpMode } = {}, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => {
    let mode = opts.mode;
    if (!mode) {
      const state = xdpQueryNetlink(ifindex, s);
      if (state.attached === 'none') return false;
      mode = state.skbProgId !== undefined ? 'skb' : 'drv';
      if (state.attached === 'multi' && state.drvProgId !== undefined) {
        setXdp(ifindex, -1, XDP_FLAGS.DRV_MODE, `detach XDP program (drv mode) from ifindex ${ifindex}`, s);
      }
    }
    setXdp(ifindex, -1, modeFlag(mode), `detach XDP program (${mode} mode) from ifindex ${ifindex}`, s);
    return true;
  });
}

/**
 * Detaches the XDP program in `mode` only if it is still the program `expectedFd` refers to
 * (XDP_FLAGS_REPLACE with IFLA_XDP_EXPECTED_FD, 5.7+): the kernel compares and removes in one
 * step, so a program someone attached meanwhile is never removed. Returns false when the hook
 * holds another program (EEXIST) or none.
 */
export function detachXdpNetlinkIf(ifindex: number, expectedFd: number, mode: XdpMode, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.SETLINK, 0, ifinfomsg(ifindex)).nest(IFLA.XDP, (b) => {
      b.s32(IFLA_XDP.FD, -1);
      b.s32(IFLA_XDP.EXPECTED_FD, expectedFd);
      b.u32(IFLA_XDP.FLAGS, modeFlag(mode) | XDP_FLAGS.REPLACE);
    }, true);
    try {
      s.request(msg, `detach XDP program (${mode} mode) from ifindex ${ifindex}`);
      return true;
    } catch (err) {
      if (err instanceof NetlinkError && (err.code === 'EEXIST' || err.code === 'ENODEV')) return false;
      throw err;
    }
  });
}

/** What XDP program(s) an interface holds, from RTM_GETLINK's IFLA_XDP. */
export function xdpQueryNetlink(ifindex: number, sock?: NetlinkSocket): XdpState {
  const link = getLink(ifindex, sock);
  if (!link) throw noInterface(String(ifindex), undefined);
  return link.xdp;
}

// ---------------------------------------------------------------------------------------------
// tc: clsact qdisc and cls_bpf filters in direct-action mode

/** Adds the clsact qdisc (ffff:0). Returns false when it was already there. */
export function ensureClsact(ifindex: number, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.NEWQDISC, NLM_F.CREATE | NLM_F.EXCL, tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT))
      .str(TCA.KIND, 'clsact');
    try {
      s.request(msg, `add clsact qdisc to ifindex ${ifindex}`);
      return true;
    } catch (err) {
      if (!(err instanceof NetlinkError && err.code === 'EEXIST')) throw err;
    }
    // Something holds the ingress slot: fine if it is clsact, not if it is the older "ingress".
    const kind = ingressQdiscKind(ifindex, s);
    if (kind !== 'clsact') {
      throw new NetmangleError(`ifindex ${ifindex} has an "${kind ?? 'unknown'}" qdisc where clsact should go`, {
        hint: 'remove it (`tc qdisc del dev DEV ingress`) so that netmangle can add clsact',
      });
    }
    return false;
  });
}

/** The kind of the qdisc attached at ffff:fff1 (clsact or ingress), if any. */
function ingressQdiscKind(ifindex: number, sock: NetlinkSocket): string | undefined {
  const replies = sock.dump(new MessageBuilder(RTM.GETQDISC, 0, tcmsg(0, 0, 0)), 'list qdiscs');
  for (const r of replies) {
    if (r.type !== RTM.NEWQDISC || r.payload.length < 20) continue;
    if (r.payload.readInt32LE(4) !== ifindex || r.payload.readUInt32LE(12) !== TC_H_CLSACT) continue;
    return attrString(attrMap(r.payload, 20).get(TCA.KIND));
  }
  return undefined;
}

/** True when the interface has a clsact qdisc. */
export function hasClsact(ifindex: number, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => ingressQdiscKind(ifindex, s) === 'clsact');
}

/** Removes the clsact qdisc and every filter on it. Returns false when there was none. */
export function removeClsact(ifindex: number, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.DELQDISC, 0, tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT)).str(TCA.KIND, 'clsact');
    try {
      s.request(msg, `remove clsact qdisc from ifindex ${ifindex}`);
      return true;
    } catch (err) {
      if (err instanceof NetlinkError && (err.code === 'ENOENT' || err.code === 'EINVAL')) return false;
      throw err;
    }
  });
}

export interface ClsBpfFilterOptions {
  /** Shown by `tc filter show` and `listClsBpfFilters`. */
  name?: string;
  /** Filter priority (1..65535); lower runs first. Default 1. */
  prio?: number;
  /** Filter handle within the priority. Default 1. */
  handle?: number;
}

export interface ClsBpfFilterRef {
  ifindex: number;
  direction: TcDirection;
  prio: number;
  handle: number;
}

/**
 * Adds a cls_bpf filter in direct-action mode (the program's return value is the verdict)
 * at ingress or egress of clsact, for every protocol. The clsact qdisc must exist
 * (see `ensureClsact`). A filter already at the same prio and handle fails with EEXIST.
 */
export function addClsBpfFilter(ifindex: number, direction: TcDirection, progFd: number, opts: ClsBpfFilterOptions = {}, sock?: NetlinkSocket): ClsBpfFilterRef {
  const prio = opts.prio ?? 1;
  const handle = opts.handle ?? 1;
  if (!(prio >= 1 && prio <= 0xffff)) throw new NetmangleError(`tc filter priority ${prio} is out of range`, { hint: 'use 1..65535' });
  withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.NEWTFILTER, NLM_F.CREATE | NLM_F.EXCL,
      tcmsg(ifindex, handle, clsactParent(direction), filterInfo(prio)))
      .str(TCA.KIND, 'bpf')
      .nest(TCA.OPTIONS, (b) => {
        b.u32(TCA_BPF.FD, progFd);
        b.str(TCA_BPF.NAME, opts.name ?? 'netmangle');
        b.u32(TCA_BPF.FLAGS, TCA_BPF_FLAG_ACT_DIRECT);
      });
    s.request(msg, `add tc ${direction} filter (bpf, prio ${prio}) to ifindex ${ifindex}`);
  });
  return { ifindex, direction, prio, handle };
}

/** Deletes one cls_bpf filter. Returns false when it was not there. */
export function delClsBpfFilter(ifindex: number, direction: TcDirection, ref: { prio: number; handle: number }, sock?: NetlinkSocket): boolean {
  return withSocket(sock, (s) => {
    const msg = new MessageBuilder(RTM.DELTFILTER, 0, tcmsg(ifindex, ref.handle, clsactParent(direction), filterInfo(ref.prio)))
      .str(TCA.KIND, 'bpf');
    try {
      s.request(msg, `delete tc ${direction} filter (prio ${ref.prio}) from ifindex ${ifindex}`);
      return true;
    } catch (err) {
      if (err instanceof NetlinkError && (err.code === 'ENOENT' || err.code === 'EINVAL')) return false;
      throw err;
    }
  });
}

export interface ClsBpfFilter extends ClsBpfFilterRef {
  /** ETH_P_* in host order (3 = all). */
  protocol: number;
  /** The kernel program id (TCA_BPF_ID). */
  progId?: number;
  name?: string;
  directAction: boolean;
  /** The program tag as hex. */
  tag?: string;
}

/** Decodes one RTM_NEWTFILTER message of kind "bpf"; undefined for other kinds and chain heads. */
export function parseFilterMessage(m: NetlinkMessage, direction: TcDirection): ClsBpfFilter | undefined {
  const p = m.payload;
  if (p.length < 20) return undefined;
  const handle = p.readUInt32LE(8);
  const info = p.readUInt32LE(16);
  const attrs = attrMap(p, 20);
  if (attrString(attrs.get(TCA.KIND)) !== 'bpf' || handle === 0) return undefined;
  const opts = attrMap(attrs.get(TCA.OPTIONS) ?? Buffer.alloc(0));
  const protoNet = info & 0xffff;
  const filter: ClsBpfFilter = {
    ifindex: p.readInt32LE(4),
    direction,
    prio: info >>> 16,
    handle,
    protocol: ((protoNet & 0xff) << 8) | (protoNet >> 8),
    directAction: ((attrU32(opts.get(TCA_BPF.FLAGS)) ?? 0) & TCA_BPF_FLAG_ACT_DIRECT) !== 0,
  };
  const id = attrU32(opts.get(TCA_BPF.ID));
  if (id !== undefined) filter.progId = id;
  const name = attrString(opts.get(TCA_BPF.NAME));
  if (name !== undefined) filter.name = name;
  const tag = opts.get(TCA_BPF.TAG);
  if (tag) filter.tag = tag.toString('hex');
  return filter;
}

/** The RTM_NEWTFILTER replies of a dump of one clsact direction (none without a clsact qdisc). */
function dumpTcFilters(s: NetlinkSocket, ifindex: number, direction: TcDirection): NetlinkMessage[] {
  let replies: NetlinkMessage[];
  try {
    replies = s.dump(new MessageBuilder(RTM.GETTFILTER, 0, tcmsg(ifindex, 0, clsactParent(direction))),
      `list tc ${direction} filters of ifindex ${ifindex}`);
  } catch (err) {
    // No clsact qdisc: nothing can be attached there.
    if (err instanceof NetlinkError && (err.code === 'EINVAL' || err.code === 'ENOENT')) return [];
    throw err;
  }
  return replies.filter((r) => r.type === RTM.NEWTFILTER);
}

/** The cls_bpf filters at one clsact direction (empty when there is no clsact qdisc). */
export function listClsBpfFilters(ifindex: number, direction: TcDirection, sock?: NetlinkSocket): ClsBpfFilter[] {
  return withSocket(sock, (s) => {
    const out: ClsBpfFilter[] = [];
    for (const r of dumpTcFilters(s, ifindex, direction)) {
      const f = parseFilterMessage(r, direction);
      if (f) out.push(f);
    }
    return out;
  });
}

/** Any tc filter (cls_bpf, u32, flower, …), as far as priorities and "is anyone there" go. */
export interface TcFilterSlot {
  prio: number;
  handle: number;
  kind?: string;
}

/**
 * Every filter at one clsact direction, of any kind (empty when there is no clsact qdisc): what
 * decides the priority a new filter takes after them, and whether the qdisc is still in use.
 */
export function listTcFilters(ifindex: number, direction: TcDirection, sock?: NetlinkSocket): TcFilterSlot[] {
  return withSocket(sock, (s) => {
    const out: TcFilterSlot[] = [];
    for (const r of dumpTcFilters(s, ifindex, direction)) {
      if (r.payload.length < 20) continue;
      const slot: TcFilterSlot = { prio: r.payload.readUInt32LE(16) >>> 16, handle: r.payload.readUInt32LE(8) };
      const kind = attrString(attrMap(r.payload, 20).get(TCA.KIND));
      if (kind !== undefined) slot.kind = kind;
      out.push(slot);
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------------

/** "no interface X in namespace Y" / "in this namespace", one line with a hint. */
export function noInterface(name: string, netns: string | undefined): NetmangleError {
  const where = netns === undefined ? 'in this namespace' : `in namespace ${netns}`;
  return new NotFoundError(`no interface ${name} ${where}`, {
    hint: netns === undefined ? 'list interfaces with `ip link`' : `list them with \`${ipCommand(netns, ['link']).join(' ')}\``,
  });
}
