/**
 * BPF links (BPF_LINK_CREATE): a program attached to a hook for as long as the link lives.
 * A link dies with its last reference — the fd here, a pin in bpffs, or another process's
 * copy — so a process killed with SIGKILL leaves nothing attached unless it pinned the link.
 *
 * XDP links need 5.9+, tcx links 6.6+. The interface index is looked up in the calling
 * thread's network namespace: to attach inside another namespace, make the call while the
 * thread is switched into it.
 */
import { NetmangleError } from '../errors.js';
import { pinObject } from './bpffs.js';
import { libc } from './ffi.js';
import { closeFd } from './fd.js';
import { linkInfoByFd, type LinkInfo } from './info.js';
import type { Program } from './program.js';
import { ATTACH_TYPES, Attr, BpfError, Cmd, EINVAL, EOPNOTSUPP, Flags, Off, bpfCall, bpfTry } from './sys.js';

export class Link implements Disposable {
  readonly id: number;
  /** 'xdp', 'tcx', ... */
  readonly type: string;
  readonly progId: number;
  readonly ifindex?: number;
  readonly attachType?: string;
  private fdValue: number;

  constructor(fd: number, info: LinkInfo) {
    this.fdValue = fd;
    this.id = info.id;
    this.type = info.type;
    this.progId = info.progId;
    if (info.ifindex !== undefined) this.ifindex = info.ifindex;
    if (info.attachType !== undefined) this.attachType = info.attachType;
  }

  /** Wraps an fd from BPF_OBJ_GET or BPF_LINK_GET_FD_BY_ID (takes ownership). */
  static fromFd(fd: number): Link {
    return new Link(fd, linkInfoByFd(fd));
  }

  get fd(): number {
    if (this.fdValue < 0) throw new NetmangleError(`link ${this.id} is already closed`);
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  info(): LinkInfo {
    return linkInfoByFd(this.fd);
  }

  /** Pins the link in bpffs so it (and the attachment) outlives this process. */
  pin(path: string): void {
    pinObject(this.fd, path);
  }

  /** Closes this fd; the program is detached unless the link is pinned or held elsewhere. */
  close(): void {
    closeFd(this.fdValue);
    this.fdValue = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function createLink(prog: Program, ifindex: number, attachType: number, flags: number, extra: (attr: Attr) => void, what: string): Link {
  const attr = new Attr()
    .u32(Off.linkCreate.progFd, prog.fd)
    .u32(Off.linkCreate.targetIfindex, ifindex)
    .u32(Off.linkCreate.attachType, attachType)
    .u32(Off.linkCreate.flags, flags);
  extra(attr);
  const fd = bpfCall(Cmd.LINK_CREATE, attr, `attach ${what} program '${prog.name}' (id ${prog.id}) to`, `ifindex ${ifindex}`);
  try {
    return Link.fromFd(fd);
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

export interface XdpLinkOptions {
  /** 'skb' (generic, any device), 'drv' (native, driver support needed), 'hw' (offload). Default: the kernel picks drv when the driver has it, else skb. */
  mode?: 'skb' | 'drv' | 'hw';
}

/** Attaches an XDP program to an interface with a link (5.9+). EBUSY/EEXIST: the hook is taken. */
export function createXdpLink(prog: Program, ifindex: number, opts: XdpLinkOptions = {}): Link {
  const flags = opts.mode === 'skb' ? Flags.XDP_SKB_MODE : opts.mode === 'drv' ? Flags.XDP_DRV_MODE : opts.mode === 'hw' ? Flags.XDP_HW_MODE : 0;
  try {
    return createLink(prog, ifindex, ATTACH_TYPES.xdp, flags, () => {}, 'XDP');
  } catch (err) {
    if (!(err instanceof BpfError)) throw err;
    // XDP answers EINVAL (not ENODEV) for an unknown ifindex; say which it was.
    if (err.errno === EINVAL && libc.ifIndexToName(ifindex, Buffer.alloc(16)) === null) {
      throw new BpfError(err.operation, err.object, err.errno, {
        hint: `there is no interface with index ${ifindex} in this network namespace: check \`ip link\` in the right namespace`,
      });
    }
    if ((err.errno === EOPNOTSUPP || err.errno === EINVAL) && opts.mode === 'drv') {
      throw new BpfError(err.operation, err.object, err.errno, { hint: 'this driver has no native XDP: use mode skb' });
    }
    throw err;
  }
}

export interface TcxLinkOptions {
  /** Run before the program with this id (default: after all others). */
  before?: number;
  /** Run after the program with this id. */
  after?: number;
  /** Fail (ESTALE) unless the hook's revision (from queryProgs) is still this one. */
  expectedRevision?: bigint;
}

/** Attaches a sched_cls program at tcx ingress or egress of an interface with a link (6.6+). */
export function createTcxLink(prog: Program, ifindex: number, direction: 'ingress' | 'egress', opts: TcxLinkOptions = {}): Link {
  if (opts.before !== undefined && opts.after !== undefined) throw new NetmangleError('a tcx link goes before one program or after one, not both');
  const attachType = direction === 'ingress' ? ATTACH_TYPES.tcx_ingress : ATTACH_TYPES.tcx_egress;
  let flags = 0;
  let relative = 0;
  if (opts.before !== undefined) {
    flags = Flags.BEFORE | Flags.ID;
    relative = opts.before;
  } else if (opts.after !== undefined) {
    flags = Flags.AFTER | Flags.ID;
    relative = opts.after;
  }
  return createLink(prog, ifindex, attachType, flags, (attr) => {
    attr.u32(Off.linkCreate.relativeId, relative);
    if (opts.expectedRevision !== undefined) attr.u64(Off.linkCreate.expectedRevision, opts.expectedRevision);
  }, `tcx ${direction}`);
}

/**
 * Puts `prog` in place of the link's program in one step (BPF_LINK_UPDATE, XDP links 5.9+,
 * tcx links 6.6+): every packet meets either the old program or the new one, never neither.
 * With `expected`, fails (EPERM) unless the link still holds that program.
 */
export function updateLink(link: Link | { fd: number; id?: number }, prog: Program, expected?: Program): void {
  const attr = new Attr()
    .u32(Off.linkUpdate.linkFd, link.fd)
    .u32(Off.linkUpdate.newProgFd, prog.fd);
  if (expected) attr.u32(Off.linkUpdate.flags, Flags.REPLACE).u32(Off.linkUpdate.oldProgFd, expected.fd);
  bpfCall(Cmd.LINK_UPDATE, attr, `put program '${prog.name}' (id ${prog.id}) in`, `link ${link.id ?? `fd ${link.fd}`}`);
}

/**
 * Detaches the link's program from its hook now (BPF_LINK_DETACH, 5.9+), even while other
 * references (pins, other processes) keep the link object itself alive. The fd stays open.
 */
export function detachLink(link: Link | { fd: number; id?: number }): void {
  const attr = new Attr().u32(Off.linkDetach.linkFd, link.fd);
  bpfCall(Cmd.LINK_DETACH, attr, 'detach', `link ${link.id ?? `fd ${link.fd}`}`);
}

/** Like detachLink, but returns false instead of throwing when the link is already detached. */
export function tryDetachLink(link: { fd: number }): boolean {
  return bpfTry(Cmd.LINK_DETACH, new Attr().u32(Off.linkDetach.linkFd, link.fd)) >= 0;
}
