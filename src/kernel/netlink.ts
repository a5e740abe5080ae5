/**
 * A small netlink client: message building (nlmsghdr, attributes, nesting, 4-byte alignment),
 * parsing, ACK and error handling with the kernel's extended-ack text, dumps, sequence numbers.
 * rtnetlink.ts builds the NETLINK_ROUTE requests on top of it.
 *
 * A netlink socket belongs to the network namespace that was current when it was created, so
 * open it inside `inNetns()` for another namespace (and close it there or later, either works).
 *
 * Layouts follow include/uapi/linux/netlink.h. All integers are host order (little-endian on
 * every machine netmangle supports) unless a field says otherwise.
 */
import { NetmangleError } from '../errors.js';
import { errno as lastErrno, errnoName, libc } from './ffi.js';

export const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
export const NETLINK_ROUTE = 0;
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
/** recv() flag: return the real length of a datagram even when it did not fit. */
const MSG_TRUNC = 0x20;
/** recv() flag: return EAGAIN instead of waiting when nothing is queued. */
const MSG_DONTWAIT = 0x40;

export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;

/** Control message types. */
export const NLMSG = { NOOP: 1, ERROR: 2, DONE: 3, OVERRUN: 4 } as const;

/** nlmsg_flags. The same bits mean different things for GET, NEW and DELETE requests. */
export const NLM_F = {
  REQUEST: 0x01,
  MULTI: 0x02,
  ACK: 0x04,
  ECHO: 0x08,
  DUMP_INTR: 0x10,
  DUMP_FILTERED: 0x20,
  // GET
  ROOT: 0x100,
  MATCH: 0x200,
  ATOMIC: 0x400,
  DUMP: 0x300,
  // NEW
  REPLACE: 0x100,
  EXCL: 0x200,
  CREATE: 0x400,
  APPEND: 0x800,
  // ACK
  CAPPED: 0x100,
  ACK_TLVS: 0x200,
} as const;

/** Attribute type bits: the kernel sets NESTED on some nests; neither is part of the type. */
export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

/** Attributes after `struct nlmsgerr` when the kernel sends an extended ack. */
export const NLMSGERR_ATTR = { MSG: 1, OFFS: 2, COOKIE: 3, POLICY: 4, MISS_TYPE: 5, MISS_NEST: 6 } as const;

export function align4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * Builds one netlink message: the fixed family header (ifinfomsg, tcmsg, ...) then attributes.
 * `nest()` opens a nested attribute whose length is filled in when its callback returns.
 */
export class MessageBuilder {
  private chunks: Buffer[] = [];
  private length = 0;

  constructor(readonly type: number, readonly flags: number, familyHeader?: Buffer) {
    if (familyHeader) this.raw(familyHeader);
  }

  /** Appends bytes, padded to 4. */
  private raw(bytes: Buffer): void {
    this.chunks.push(bytes);
    this.length += bytes.length;
    const pad = align4(bytes.length) - bytes.length;
    if (pad) {
      this.chunks.push(Buffer.alloc(pad));
      this.length += pad;
    }
  }

  /** An attribute with an arbitrary payload. */
  attr(type: number, payload: Buffer): this {
    const header = Buffer.alloc(NLA_HDRLEN);
    header.writeUInt16LE(NLA_HDRLEN + payload.length, 0);
    header.writeUInt16LE(type, 2);
    this.raw(header);
    if (payload.length) this.raw(payload);
    return this;
  }
  u8(type: number, value: number): this {
    return this.attr(type, Buffer.from([value & 0xff]));
  }
  u16(type: number, value: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(value, 0);
    return this.attr(type, b);
  }
  u32(type: number, value: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value >>> 0, 0);
    return this.attr(type, b);
  }
  s32(type: number, value: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32LE(value | 0, 0);
    return this.attr(type, b);
  }
  /** A NUL-terminated string (what the kernel's NLA_STRING / NLA_NUL_STRING policies accept). */
  str(type: number, value: string): this {
    return this.attr(type, Buffer.concat([Buffer.from(value, 'utf8'), Buffer.alloc(1)]));
  }
  /** A nested attribute; `fill` adds its children. Sets NLA_F_NESTED when `flagNested`. */
  nest(type: number, fill: (b: this) => void, flagNested = false): this {
    const header = Buffer.alloc(NLA_HDRLEN);
    header.writeUInt16LE(type | (flagNested ? NLA_F_NESTED : 0), 2);
    const start = this.length;
    this.raw(header);
    fill(this);
    header.writeUInt16LE(this.length - start, 0);
    return this;
  }

  /** The finished message with `seq` and `portId` in its header. */
  build(seq: number, portId = 0): Buffer {
    const header = Buffer.alloc(NLMSG_HDRLEN);
    header.writeUInt32LE(NLMSG_HDRLEN + this.length, 0);
    header.writeUInt16LE(this.type, 4);
    header.writeUInt16LE(this.flags, 6);
    header.writeUInt32LE(seq >>> 0, 8);
    header.writeUInt32LE(portId >>> 0, 12);
    return Buffer.concat([header, ...this.chunks]);
  }
}

export interface NetlinkMessage {
  type: number;
  flags: number;
  seq: number;
  portId: number;
  /** Everything after the 16-byte header. */
  payload: Buffer;
}

/** Splits a datagram into messages; a length that runs past the end is an error. */
export function parseMessages(data: Buffer): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= data.length) {
    const len = data.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > data.length) {
      throw new Error(`malformed netlink message at byte ${off}: length ${len}, ${data.length - off} bytes left`);
    }
    out.push({
      type: data.readUInt16LE(off + 4),
      flags: data.readUInt16LE(off + 6),
      seq: data.readUInt32LE(off + 8),
      portId: data.readUInt32LE(off + 12),
      payload: data.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

export interface NetlinkAttr {
  /** The type without the NESTED / NET_BYTEORDER bits. */
  type: number;
  data: Buffer;
}

/** Attributes from `buf` (starting at `offset`), in order; stops at a truncated one. */
export function parseAttrs(buf: Buffer, offset = 0): NetlinkAttr[] {
  const out: NetlinkAttr[] = [];
  let off = offset;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < NLA_HDRLEN || off + len > buf.length) break;
    out.push({ type: buf.readUInt16LE(off + 2) & NLA_TYPE_MASK, data: buf.subarray(off + NLA_HDRLEN, off + len) });
    off += align4(len);
  }
  return out;
}

/** Attributes by type (the last one wins when a type repeats). */
export function attrMap(buf: Buffer, offset = 0): Map<number, Buffer> {
  const map = new Map<number, Buffer>();
  for (const a of parseAttrs(buf, offset)) map.set(a.type, a.data);
  return map;
}

export function attrU32(data: Buffer | undefined): number | undefined {
  return data && data.length >= 4 ? data.readUInt32LE(0) : undefined;
}
export function attrU8(data: Buffer | undefined): number | undefined {
  return data && data.length >= 1 ? data.readUInt8(0) : undefined;
}
export function attrString(data: Buffer | undefined): string | undefined {
  if (!data) return undefined;
  const end = data.indexOf(0);
  return data.subarray(0, end < 0 ? data.length : end).toString('utf8');
}

/** What an NLMSG_ERROR message says: errno 0 is a plain ACK. */
export interface NetlinkAck {
  /** Positive errno, 0 for success. */
  errno: number;
  /** The kernel's extended-ack text, e.g. "Exclusivity flag on, cannot modify". */
  message?: string;
  /** Offset of the offending attribute in the request, when the kernel names one. */
  offset?: number;
}

/**
 * Parses the payload of an NLMSG_ERROR message (struct nlmsgerr plus ext-ack attributes), or
 * with `isDone` that of a dump's NLMSG_DONE (an int error, then the attributes directly).
 */
export function parseAck(payload: Buffer, flags: number, isDone = false): NetlinkAck {
  if (payload.length < 4) throw new Error('malformed netlink error message');
  const errnoValue = -payload.readInt32LE(0) | 0;
  const ack: NetlinkAck = { errno: errnoValue };
  if (!(flags & NLM_F.ACK_TLVS)) return ack;
  let attrsAt = 4;
  if (!isDone) {
    if (payload.length < 4 + NLMSG_HDRLEN) return ack;
    // The echoed request: only its header when capped, else the whole message.
    attrsAt += align4(flags & NLM_F.CAPPED ? NLMSG_HDRLEN : payload.readUInt32LE(4));
  }
  const attrs = attrMap(payload, attrsAt);
  const text = attrString(attrs.get(NLMSGERR_ATTR.MSG));
  if (text) ack.message = text;
  const offs = attrU32(attrs.get(NLMSGERR_ATTR.OFFS));
  if (offs !== undefined) ack.offset = offs;
  return ack;
}

/** What a user can do about the errnos rtnetlink requests return. */
function hintFor(code: string): string | undefined {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      return 'changing interfaces, qdiscs and filters needs CAP_NET_ADMIN: run netmangle as root';
    case 'ENODEV':
      return 'no such network interface in this namespace: check the name with `ip link` (inside the right namespace)';
    case 'EEXIST':
    case 'EBUSY':
      return 'something is already attached there: detach it first, or choose another handle or priority';
    case 'EOPNOTSUPP':
    case 'ENOTSUP':
      return 'the driver or kernel does not support this (for XDP try mode skb; run `netmangle probe`)';
    default:
      return undefined;
  }
}

/** A netlink request the kernel refused: the operation, the errno and the kernel's own words. */
export class NetlinkError extends NetmangleError {
  readonly operation: string;
  readonly errno: number;
  readonly kernelMessage?: string;
  constructor(operation: string, errnoValue: number, kernelMessage?: string, hint?: string) {
    const code = errnoName(errnoValue);
    super(`${operation}: ${code}${kernelMessage ? ` (${kernelMessage})` : ''}`, { hint: hint ?? hintFor(code) });
    this.operation = operation;
    this.errno = errnoValue;
    this.kernelMessage = kernelMessage;
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

/** Starting sequence numbers differ per socket so that a stray reply is never mistaken. */
let nextSocketSeq = (Date.now() & 0x3fffffff) >>> 0;

/** An open netlink socket. Use within one synchronous stretch of code; close when done. */
export class NetlinkSocket {
  private seq: number;
  private readonly recvBuf = Buffer.alloc(64 * 1024);
  private closed = false;

  private constructor(readonly fd: number) {
    nextSocketSeq = (nextSocketSeq + 0x10000) & 0x3fffffff;
    this.seq = nextSocketSeq;
  }

  /**
   * Opens and binds a socket in the current network namespace (NETLINK_ROUTE by default),
   * subscribed to the multicast `groups` (a bit mask, e.g. RTMGRP_LINK) when given: their
   * notifications are then read with `pollNotifications()`.
   */
  static open(protocol = NETLINK_ROUTE, groups = 0): NetlinkSocket {
    const fd = libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd < 0) throw new NetlinkError('open netlink socket', lastErrno());
    const sock = new NetlinkSocket(fd);
    try {
      const one = Buffer.alloc(4);
      one.writeUInt32LE(1, 0);
      // Extended acks carry the kernel's error text; capped acks skip echoing our request.
      // Both are best effort: old kernels lack them and the errno still arrives.
      libc.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, one, 4);
      libc.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4);
      const addr = Buffer.alloc(12); // struct sockaddr_nl, port id 0: the kernel picks one
      addr.writeUInt16LE(AF_NETLINK, 0);
      addr.writeUInt32LE(groups >>> 0, 8);
      if (libc.bind(fd, addr, addr.length) < 0) throw new NetlinkError('bind netlink socket', lastErrno());
    } catch (err) {
      sock.close();
      throw err;
    }
    return sock;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
  [Symbol.dispose](): void {
    this.close();
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  private sendMessage(msg: MessageBuilder, flags: number, operation: string): number {
    const seq = this.nextSeq();
    const bytes = msg.build(seq);
    bytes.writeUInt16LE(flags, 6);
    for (;;) {
      const n = libc.send(this.fd, bytes, bytes.length, 0);
      if (n >= 0) break;
      const e = lastErrno();
      if (errnoName(e) === 'EINTR') continue;
      throw new NetlinkError(operation, e);
    }
    return seq;
  }

  /** One datagram, split into messages. */
  private receive(operation: string): NetlinkMessage[] {
    for (;;) {
      const n = Number(libc.recv(this.fd, this.recvBuf, this.recvBuf.length, MSG_TRUNC));
      if (n < 0) {
        const e = lastErrno();
        if (errnoName(e) === 'EINTR') continue;
        throw new NetlinkError(operation, e);
      }
      if (n > this.recvBuf.length) throw new Error(`${operation}: netlink reply of ${n} bytes did not fit the receive buffer`);
      return parseMessages(Buffer.from(this.recvBuf.subarray(0, n)));
    }
  }

  /**
   * The notifications queued on a subscribed socket, without waiting. `overflow` says the
   * kernel dropped some (ENOBUFS: the queue was full), so the caller must ask for the state
   * instead of relying on the messages.
   */
  pollNotifications(): { messages: NetlinkMessage[]; overflow: boolean } {
    const messages: NetlinkMessage[] = [];
    let overflow = false;
    for (;;) {
      const n = Number(libc.recv(this.fd, this.recvBuf, this.recvBuf.length, MSG_TRUNC | MSG_DONTWAIT));
      if (n < 0) {
        const e = lastErrno();
        const code = errnoName(e);
        if (code === 'EINTR') continue;
        if (code === 'ENOBUFS') {
          overflow = true;
          continue;
        }
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return { messages, overflow };
        throw new NetlinkError('read netlink notifications', e);
      }
      // A datagram larger than the buffer was cut: what it said is lost, as on overflow.
      if (n > this.recvBuf.length) overflow = true;
      else messages.push(...parseMessages(Buffer.from(this.recvBuf.subarray(0, n))));
    }
  }

  /**
   * Sends a request with NLM_F_ACK and waits for its ACK. Replies to the request itself
   * (e.g. RTM_GETLINK for one interface) are returned. A refusal throws NetlinkError
   * naming `operation`.
   */
  request(msg: MessageBuilder, operation: string): NetlinkMessage[] {
    const seq = this.sendMessage(msg, msg.flags | NLM_F.REQUEST | NLM_F.ACK, operation);
    const replies: NetlinkMessage[] = [];
    for (;;) {
      for (const m of this.receive(operation)) {
        if (m.seq !== seq) continue; // a late reply to an earlier request
        if (m.type === NLMSG.ERROR) {
          const ack = parseAck(m.payload, m.flags);
          if (ack.errno !== 0) throw new NetlinkError(operation, ack.errno, ack.message);
          return replies;
        }
        if (m.type === NLMSG.DONE) return replies;
        if (m.type !== NLMSG.NOOP) replies.push(m);
      }
    }
  }

  /** Sends a dump request (NLM_F_DUMP) and collects every reply until NLMSG_DONE. */
  dump(msg: MessageBuilder, operation: string): NetlinkMessage[] {
    const seq = this.sendMessage(msg, msg.flags | NLM_F.REQUEST | NLM_F.DUMP, operation);
    const replies: NetlinkMessage[] = [];
    for (;;) {
      for (const m of this.receive(operation)) {
        if (m.seq !== seq) continue;
        if (m.type === NLMSG.DONE) {
          // A dump's DONE carries an int error (0 normally), and an ext-ack after it since 4.20.
          if (m.payload.length >= 4 && m.payload.readInt32LE(0) < 0) {
            const ack = parseAck(m.payload, m.flags, true);
            throw new NetlinkError(operation, ack.errno, ack.message);
          }
          return replies;
        }
        if (m.type === NLMSG.ERROR) {
          const ack = parseAck(m.payload, m.flags);
          if (ack.errno !== 0) throw new NetlinkError(operation, ack.errno, ack.message);
          return replies;
        }
        if (m.type !== NLMSG.NOOP) replies.push(m);
      }
    }
  }
}

/** Opens a socket, runs `fn` with it and closes it. Synchronous, so it fits inside `inNetns`. */
export function withNetlink<T>(fn: (sock: NetlinkSocket) => T): T {
  const sock = NetlinkSocket.open();
  try {
    return fn(sock);
  } finally {
    sock.close();
  }
}
